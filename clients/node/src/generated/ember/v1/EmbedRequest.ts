// Original file: proto/ember/v1/ember.proto

import type { InputType as _ember_v1_InputType, InputType__Output as _ember_v1_InputType__Output } from '../../ember/v1/InputType';
import type { TruncationDirection as _ember_v1_TruncationDirection, TruncationDirection__Output as _ember_v1_TruncationDirection__Output } from '../../ember/v1/TruncationDirection';
import type { Priority as _ember_v1_Priority, Priority__Output as _ember_v1_Priority__Output } from '../../ember/v1/Priority';
import type { Encoding as _ember_v1_Encoding, Encoding__Output as _ember_v1_Encoding__Output } from '../../ember/v1/Encoding';
import type { EmbedOutput as _ember_v1_EmbedOutput, EmbedOutput__Output as _ember_v1_EmbedOutput__Output } from '../../ember/v1/EmbedOutput';
import type { SparseOptions as _ember_v1_SparseOptions, SparseOptions__Output as _ember_v1_SparseOptions__Output } from '../../ember/v1/SparseOptions';
import type { QuantizationRanges as _ember_v1_QuantizationRanges, QuantizationRanges__Output as _ember_v1_QuantizationRanges__Output } from '../../ember/v1/QuantizationRanges';

export interface EmbedRequest {
  'model'?: (string);
  'inputs'?: (string)[];
  'input_type'?: (_ember_v1_InputType);
  'prompt_name'?: (string);
  'normalize'?: (boolean);
  'dimensions'?: (number);
  'truncate'?: (boolean);
  'truncation_direction'?: (_ember_v1_TruncationDirection);
  'priority'?: (_ember_v1_Priority);
  'encoding'?: (_ember_v1_Encoding);
  'request_id'?: (string);
  'outputs'?: (_ember_v1_EmbedOutput)[];
  'sparse'?: (_ember_v1_SparseOptions | null);
  'int8_ranges'?: (_ember_v1_QuantizationRanges | null);
  '_normalize'?: "normalize";
  '_truncate'?: "truncate";
}

export interface EmbedRequest__Output {
  'model': (string);
  'inputs': (string)[];
  'input_type': (_ember_v1_InputType__Output);
  'prompt_name': (string);
  'normalize'?: (boolean);
  'dimensions': (number);
  'truncate'?: (boolean);
  'truncation_direction': (_ember_v1_TruncationDirection__Output);
  'priority': (_ember_v1_Priority__Output);
  'encoding': (_ember_v1_Encoding__Output);
  'request_id': (string);
  'outputs': (_ember_v1_EmbedOutput__Output)[];
  'sparse': (_ember_v1_SparseOptions__Output | null);
  'int8_ranges': (_ember_v1_QuantizationRanges__Output | null);
  '_normalize'?: "normalize";
  '_truncate'?: "truncate";
}
