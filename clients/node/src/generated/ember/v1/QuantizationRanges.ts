// Original file: proto/ember/v1/ember.proto


export interface QuantizationRanges {
  'min'?: (number | string)[];
  'max'?: (number | string)[];
}

export interface QuantizationRanges__Output {
  'min': (number)[];
  'max': (number)[];
}
