// Original file: proto/ember/v1/ember.proto

export const Priority = {
  PRIORITY_UNSPECIFIED: 'PRIORITY_UNSPECIFIED',
  PRIORITY_REALTIME: 'PRIORITY_REALTIME',
  PRIORITY_BULK: 'PRIORITY_BULK',
} as const;

export type Priority =
  | 'PRIORITY_UNSPECIFIED'
  | 0
  | 'PRIORITY_REALTIME'
  | 1
  | 'PRIORITY_BULK'
  | 2

export type Priority__Output = typeof Priority[keyof typeof Priority]
