// Original file: proto/ember/v1/ember.proto

import type { Priority as _ember_v1_Priority, Priority__Output as _ember_v1_Priority__Output } from '../../ember/v1/Priority';
import type { TruncationDirection as _ember_v1_TruncationDirection, TruncationDirection__Output as _ember_v1_TruncationDirection__Output } from '../../ember/v1/TruncationDirection';

export interface RerankRequest {
  'model'?: (string);
  'query'?: (string);
  'documents'?: (string)[];
  'top_n'?: (number);
  'return_documents'?: (boolean);
  'raw_scores'?: (boolean);
  'truncate'?: (boolean);
  'priority'?: (_ember_v1_Priority);
  'request_id'?: (string);
  'truncation_direction'?: (_ember_v1_TruncationDirection);
  'instruction'?: (string);
  '_truncate'?: "truncate";
}

export interface RerankRequest__Output {
  'model': (string);
  'query': (string);
  'documents': (string)[];
  'top_n': (number);
  'return_documents': (boolean);
  'raw_scores': (boolean);
  'truncate'?: (boolean);
  'priority': (_ember_v1_Priority__Output);
  'request_id': (string);
  'truncation_direction': (_ember_v1_TruncationDirection__Output);
  'instruction': (string);
  '_truncate'?: "truncate";
}
