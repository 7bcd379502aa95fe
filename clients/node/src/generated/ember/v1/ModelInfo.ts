// Original file: proto/ember/v1/ember.proto

import type { ModelTask as _ember_v1_ModelTask, ModelTask__Output as _ember_v1_ModelTask__Output } from '../../ember/v1/ModelTask';
import type { EmbedOutput as _ember_v1_EmbedOutput, EmbedOutput__Output as _ember_v1_EmbedOutput__Output } from '../../ember/v1/EmbedOutput';
import type { Encoding as _ember_v1_Encoding, Encoding__Output as _ember_v1_Encoding__Output } from '../../ember/v1/Encoding';
import type { Long } from '@grpc/proto-loader';

export interface ModelInfo {
  'name'?: (string);
  'task'?: (_ember_v1_ModelTask);
  'dimensions'?: (number);
  'max_tokens'?: (number);
  'pooling'?: (string);
  'normalize'?: (boolean);
  'matryoshka_dimensions'?: (number)[];
  'prompts'?: ({[key: string]: string});
  'dtype'?: (string);
  'providers'?: (string)[];
  'unavailable_providers'?: (string)[];
  'is_default_embed'?: (boolean);
  'is_default_rerank'?: (boolean);
  'ready'?: (boolean);
  'architecture'?: (string);
  'degraded'?: (boolean);
  'fallback_batches'?: (number | string | Long);
  'accelerator_errors'?: (number | string | Long);
  'max_batch_tokens'?: (number);
  'lanes'?: (number);
  'outputs'?: (_ember_v1_EmbedOutput)[];
  'encodings'?: (_ember_v1_Encoding)[];
}

export interface ModelInfo__Output {
  'name': (string);
  'task': (_ember_v1_ModelTask__Output);
  'dimensions': (number);
  'max_tokens': (number);
  'pooling': (string);
  'normalize': (boolean);
  'matryoshka_dimensions': (number)[];
  'prompts': ({[key: string]: string});
  'dtype': (string);
  'providers': (string)[];
  'unavailable_providers': (string)[];
  'is_default_embed': (boolean);
  'is_default_rerank': (boolean);
  'ready': (boolean);
  'architecture': (string);
  'degraded': (boolean);
  'fallback_batches': (string);
  'accelerator_errors': (string);
  'max_batch_tokens': (number);
  'lanes': (number);
  'outputs': (_ember_v1_EmbedOutput__Output)[];
  'encodings': (_ember_v1_Encoding__Output)[];
}
