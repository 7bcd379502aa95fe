// Original file: proto/ember/v1/ember.proto


export interface FloatVector {
  'values'?: (number | string)[];
}

export interface FloatVector__Output {
  'values': (number)[];
}
