// Original file: proto/ember/v1/ember.proto


export interface SparseVector {
  'indices'?: (number)[];
  'values'?: (number | string)[];
  'tokens'?: (string)[];
}

export interface SparseVector__Output {
  'indices': (number)[];
  'values': (number)[];
  'tokens': (string)[];
}
