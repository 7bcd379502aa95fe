// Original file: proto/ember/v1/ember.proto


export interface ModelRequest {
  'name'?: (string);
}

export interface ModelRequest__Output {
  'name': (string);
}
