// Original file: proto/ember/v1/ember.proto


export interface SparseOptions {
  'top_k'?: (number);
  'min_weight'?: (number | string);
  'return_tokens'?: (boolean);
}

export interface SparseOptions__Output {
  'top_k': (number);
  'min_weight': (number);
  'return_tokens': (boolean);
}
