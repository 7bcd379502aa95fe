// Original file: proto/ember/v1/ember.proto

export const EmbedOutput = {
  EMBED_OUTPUT_UNSPECIFIED: 'EMBED_OUTPUT_UNSPECIFIED',
  EMBED_OUTPUT_DENSE: 'EMBED_OUTPUT_DENSE',
  EMBED_OUTPUT_SPARSE: 'EMBED_OUTPUT_SPARSE',
  EMBED_OUTPUT_MULTI_VECTOR: 'EMBED_OUTPUT_MULTI_VECTOR',
} as const;

export type EmbedOutput =
  | 'EMBED_OUTPUT_UNSPECIFIED'
  | 0
  | 'EMBED_OUTPUT_DENSE'
  | 1
  | 'EMBED_OUTPUT_SPARSE'
  | 2
  | 'EMBED_OUTPUT_MULTI_VECTOR'
  | 3

export type EmbedOutput__Output = typeof EmbedOutput[keyof typeof EmbedOutput]
