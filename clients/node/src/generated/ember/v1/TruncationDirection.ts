// Original file: proto/ember/v1/ember.proto

export const TruncationDirection = {
  TRUNCATION_DIRECTION_UNSPECIFIED: 'TRUNCATION_DIRECTION_UNSPECIFIED',
  TRUNCATION_DIRECTION_RIGHT: 'TRUNCATION_DIRECTION_RIGHT',
  TRUNCATION_DIRECTION_LEFT: 'TRUNCATION_DIRECTION_LEFT',
} as const;

export type TruncationDirection =
  | 'TRUNCATION_DIRECTION_UNSPECIFIED'
  | 0
  | 'TRUNCATION_DIRECTION_RIGHT'
  | 1
  | 'TRUNCATION_DIRECTION_LEFT'
  | 2

export type TruncationDirection__Output = typeof TruncationDirection[keyof typeof TruncationDirection]
