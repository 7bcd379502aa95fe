// Original file: proto/ember/v1/ember.proto

import type { Embedding as _ember_v1_Embedding, Embedding__Output as _ember_v1_Embedding__Output } from '../../ember/v1/Embedding';
import type { Usage as _ember_v1_Usage, Usage__Output as _ember_v1_Usage__Output } from '../../ember/v1/Usage';
import type { Timing as _ember_v1_Timing, Timing__Output as _ember_v1_Timing__Output } from '../../ember/v1/Timing';

export interface EmbedResponse {
  'model'?: (string);
  'embeddings'?: (_ember_v1_Embedding)[];
  'dimensions'?: (number);
  'request_id'?: (string);
  'usage'?: (_ember_v1_Usage | null);
  'timing'?: (_ember_v1_Timing | null);
  'sparse_dimensions'?: (number);
}

export interface EmbedResponse__Output {
  'model': (string);
  'embeddings': (_ember_v1_Embedding__Output)[];
  'dimensions': (number);
  'request_id': (string);
  'usage': (_ember_v1_Usage__Output | null);
  'timing': (_ember_v1_Timing__Output | null);
  'sparse_dimensions': (number);
}
