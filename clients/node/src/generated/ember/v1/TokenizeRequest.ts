// Original file: proto/ember/v1/ember.proto

import type { InputType as _ember_v1_InputType, InputType__Output as _ember_v1_InputType__Output } from '../../ember/v1/InputType';
import type { TruncationDirection as _ember_v1_TruncationDirection, TruncationDirection__Output as _ember_v1_TruncationDirection__Output } from '../../ember/v1/TruncationDirection';

export interface TokenizeRequest {
  'model'?: (string);
  'inputs'?: (string)[];
  'input_type'?: (_ember_v1_InputType);
  'prompt_name'?: (string);
  'truncate'?: (boolean);
  'truncation_direction'?: (_ember_v1_TruncationDirection);
  'return_ids'?: (boolean);
  '_truncate'?: "truncate";
}

export interface TokenizeRequest__Output {
  'model': (string);
  'inputs': (string)[];
  'input_type': (_ember_v1_InputType__Output);
  'prompt_name': (string);
  'truncate'?: (boolean);
  'truncation_direction': (_ember_v1_TruncationDirection__Output);
  'return_ids': (boolean);
  '_truncate'?: "truncate";
}
