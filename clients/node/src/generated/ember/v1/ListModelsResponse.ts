// Original file: proto/ember/v1/ember.proto

import type { ModelInfo as _ember_v1_ModelInfo, ModelInfo__Output as _ember_v1_ModelInfo__Output } from '../../ember/v1/ModelInfo';

export interface ListModelsResponse {
  'models'?: (_ember_v1_ModelInfo)[];
}

export interface ListModelsResponse__Output {
  'models': (_ember_v1_ModelInfo__Output)[];
}
