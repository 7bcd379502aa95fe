// Original file: proto/ember/v1/ember.proto

import type { Long } from '@grpc/proto-loader';

export interface Timing {
  'queue_ns'?: (number | string | Long);
  'tokenize_ns'?: (number | string | Long);
  'inference_ns'?: (number | string | Long);
  'total_ns'?: (number | string | Long);
}

export interface Timing__Output {
  'queue_ns': (string);
  'tokenize_ns': (string);
  'inference_ns': (string);
  'total_ns': (string);
}
