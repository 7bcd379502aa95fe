// Original file: proto/ember/v1/ember.proto

import type { FloatVector as _ember_v1_FloatVector, FloatVector__Output as _ember_v1_FloatVector__Output } from '../../ember/v1/FloatVector';
import type { SparseVector as _ember_v1_SparseVector, SparseVector__Output as _ember_v1_SparseVector__Output } from '../../ember/v1/SparseVector';
import type { MultiVector as _ember_v1_MultiVector, MultiVector__Output as _ember_v1_MultiVector__Output } from '../../ember/v1/MultiVector';

export interface Embedding {
  'values'?: (_ember_v1_FloatVector | null);
  'packed'?: (Buffer | Uint8Array | string);
  'tokens'?: (number);
  'truncated'?: (boolean);
  'sparse'?: (_ember_v1_SparseVector | null);
  'multi_vector'?: (_ember_v1_MultiVector | null);
  'data'?: "values"|"packed";
}

export interface Embedding__Output {
  'values'?: (_ember_v1_FloatVector__Output | null);
  'packed'?: (Buffer);
  'tokens': (number);
  'truncated': (boolean);
  'sparse': (_ember_v1_SparseVector__Output | null);
  'multi_vector': (_ember_v1_MultiVector__Output | null);
  'data'?: "values"|"packed";
}
