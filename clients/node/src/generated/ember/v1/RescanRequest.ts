// Original file: proto/ember/v1/ember.proto


export interface RescanRequest {
}

export interface RescanRequest__Output {
}
