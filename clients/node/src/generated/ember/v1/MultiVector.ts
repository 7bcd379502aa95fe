// Original file: proto/ember/v1/ember.proto


export interface MultiVector {
  'rows'?: (number);
  'dimensions'?: (number);
  'packed'?: (Buffer | Uint8Array | string);
}

export interface MultiVector__Output {
  'rows': (number);
  'dimensions': (number);
  'packed': (Buffer);
}
