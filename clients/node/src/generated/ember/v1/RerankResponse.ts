// Original file: proto/ember/v1/ember.proto

import type { RerankResult as _ember_v1_RerankResult, RerankResult__Output as _ember_v1_RerankResult__Output } from '../../ember/v1/RerankResult';
import type { Usage as _ember_v1_Usage, Usage__Output as _ember_v1_Usage__Output } from '../../ember/v1/Usage';
import type { Timing as _ember_v1_Timing, Timing__Output as _ember_v1_Timing__Output } from '../../ember/v1/Timing';

export interface RerankResponse {
  'model'?: (string);
  'results'?: (_ember_v1_RerankResult)[];
  'request_id'?: (string);
  'usage'?: (_ember_v1_Usage | null);
  'timing'?: (_ember_v1_Timing | null);
}

export interface RerankResponse__Output {
  'model': (string);
  'results': (_ember_v1_RerankResult__Output)[];
  'request_id': (string);
  'usage': (_ember_v1_Usage__Output | null);
  'timing': (_ember_v1_Timing__Output | null);
}
