// Original file: proto/ember/v1/ember.proto

import type { FloatVector as _ember_v1_FloatVector, FloatVector__Output as _ember_v1_FloatVector__Output } from '../../ember/v1/FloatVector';

export interface Embedding {
  'values'?: (_ember_v1_FloatVector | null);
  'packed'?: (Buffer | Uint8Array | string);
  'tokens'?: (number);
  'truncated'?: (boolean);
  'data'?: "values"|"packed";
}

export interface Embedding__Output {
  'values'?: (_ember_v1_FloatVector__Output | null);
  'packed'?: (Buffer);
  'tokens': (number);
  'truncated': (boolean);
  'data'?: "values"|"packed";
}
