// Original file: proto/ember/v1/ember.proto

export const Encoding = {
  ENCODING_UNSPECIFIED: 'ENCODING_UNSPECIFIED',
  ENCODING_FLOAT: 'ENCODING_FLOAT',
  ENCODING_FLOAT32_BYTES: 'ENCODING_FLOAT32_BYTES',
} as const;

export type Encoding =
  | 'ENCODING_UNSPECIFIED'
  | 0
  | 'ENCODING_FLOAT'
  | 1
  | 'ENCODING_FLOAT32_BYTES'
  | 2

export type Encoding__Output = typeof Encoding[keyof typeof Encoding]
