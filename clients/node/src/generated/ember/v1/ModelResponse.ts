// Original file: proto/ember/v1/ember.proto

import type { ModelInfo as _ember_v1_ModelInfo, ModelInfo__Output as _ember_v1_ModelInfo__Output } from '../../ember/v1/ModelInfo';

export interface ModelResponse {
  'name'?: (string);
  'model'?: (_ember_v1_ModelInfo | null);
  '_model'?: "model";
}

export interface ModelResponse__Output {
  'name': (string);
  'model'?: (_ember_v1_ModelInfo__Output | null);
  '_model'?: "model";
}
