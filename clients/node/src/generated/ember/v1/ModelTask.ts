// Original file: proto/ember/v1/ember.proto

export const ModelTask = {
  MODEL_TASK_UNSPECIFIED: 'MODEL_TASK_UNSPECIFIED',
  MODEL_TASK_EMBED: 'MODEL_TASK_EMBED',
  MODEL_TASK_RERANK: 'MODEL_TASK_RERANK',
} as const;

export type ModelTask =
  | 'MODEL_TASK_UNSPECIFIED'
  | 0
  | 'MODEL_TASK_EMBED'
  | 1
  | 'MODEL_TASK_RERANK'
  | 2

export type ModelTask__Output = typeof ModelTask[keyof typeof ModelTask]
