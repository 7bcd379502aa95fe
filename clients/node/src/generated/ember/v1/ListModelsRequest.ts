// Original file: proto/ember/v1/ember.proto


export interface ListModelsRequest {
}

export interface ListModelsRequest__Output {
}
