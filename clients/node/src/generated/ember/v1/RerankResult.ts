// Original file: proto/ember/v1/ember.proto


export interface RerankResult {
  'index'?: (number);
  'score'?: (number | string);
  'document'?: (string);
  'tokens'?: (number);
  'truncated'?: (boolean);
  '_document'?: "document";
}

export interface RerankResult__Output {
  'index': (number);
  'score': (number);
  'document'?: (string);
  'tokens': (number);
  'truncated': (boolean);
  '_document'?: "document";
}
