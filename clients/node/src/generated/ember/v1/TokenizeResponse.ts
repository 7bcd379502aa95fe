// Original file: proto/ember/v1/ember.proto

import type { TokenizedInput as _ember_v1_TokenizedInput, TokenizedInput__Output as _ember_v1_TokenizedInput__Output } from '../../ember/v1/TokenizedInput';

export interface TokenizeResponse {
  'model'?: (string);
  'inputs'?: (_ember_v1_TokenizedInput)[];
}

export interface TokenizeResponse__Output {
  'model': (string);
  'inputs': (_ember_v1_TokenizedInput__Output)[];
}
