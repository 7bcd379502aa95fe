// Original file: proto/ember/v1/ember.proto


export interface TokenizedInput {
  'tokens'?: (number);
  'truncated'?: (boolean);
  'ids'?: (number)[];
}

export interface TokenizedInput__Output {
  'tokens': (number);
  'truncated': (boolean);
  'ids': (number)[];
}
