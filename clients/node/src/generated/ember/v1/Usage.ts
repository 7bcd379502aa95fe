// Original file: proto/ember/v1/ember.proto

import type { Long } from '@grpc/proto-loader';

export interface Usage {
  'prompt_tokens'?: (number | string | Long);
  'total_tokens'?: (number | string | Long);
}

export interface Usage__Output {
  'prompt_tokens': (string);
  'total_tokens': (string);
}
