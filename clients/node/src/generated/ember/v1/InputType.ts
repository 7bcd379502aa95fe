// Original file: proto/ember/v1/ember.proto

export const InputType = {
  INPUT_TYPE_UNSPECIFIED: 'INPUT_TYPE_UNSPECIFIED',
  INPUT_TYPE_QUERY: 'INPUT_TYPE_QUERY',
  INPUT_TYPE_DOCUMENT: 'INPUT_TYPE_DOCUMENT',
} as const;

export type InputType =
  | 'INPUT_TYPE_UNSPECIFIED'
  | 0
  | 'INPUT_TYPE_QUERY'
  | 1
  | 'INPUT_TYPE_DOCUMENT'
  | 2

export type InputType__Output = typeof InputType[keyof typeof InputType]
