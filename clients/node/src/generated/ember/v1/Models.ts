// Original file: proto/ember/v1/ember.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { ListModelsRequest as _ember_v1_ListModelsRequest, ListModelsRequest__Output as _ember_v1_ListModelsRequest__Output } from '../../ember/v1/ListModelsRequest';
import type { ListModelsResponse as _ember_v1_ListModelsResponse, ListModelsResponse__Output as _ember_v1_ListModelsResponse__Output } from '../../ember/v1/ListModelsResponse';
import type { TokenizeRequest as _ember_v1_TokenizeRequest, TokenizeRequest__Output as _ember_v1_TokenizeRequest__Output } from '../../ember/v1/TokenizeRequest';
import type { TokenizeResponse as _ember_v1_TokenizeResponse, TokenizeResponse__Output as _ember_v1_TokenizeResponse__Output } from '../../ember/v1/TokenizeResponse';

export interface ModelsClient extends grpc.Client {
  ListModels(argument: _ember_v1_ListModelsRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  ListModels(argument: _ember_v1_ListModelsRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  ListModels(argument: _ember_v1_ListModelsRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  ListModels(argument: _ember_v1_ListModelsRequest, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  listModels(argument: _ember_v1_ListModelsRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  listModels(argument: _ember_v1_ListModelsRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  listModels(argument: _ember_v1_ListModelsRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  listModels(argument: _ember_v1_ListModelsRequest, callback: grpc.requestCallback<_ember_v1_ListModelsResponse__Output>): grpc.ClientUnaryCall;
  
  Tokenize(argument: _ember_v1_TokenizeRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  Tokenize(argument: _ember_v1_TokenizeRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  Tokenize(argument: _ember_v1_TokenizeRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  Tokenize(argument: _ember_v1_TokenizeRequest, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  tokenize(argument: _ember_v1_TokenizeRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  tokenize(argument: _ember_v1_TokenizeRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  tokenize(argument: _ember_v1_TokenizeRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  tokenize(argument: _ember_v1_TokenizeRequest, callback: grpc.requestCallback<_ember_v1_TokenizeResponse__Output>): grpc.ClientUnaryCall;
  
}

export interface ModelsHandlers extends grpc.UntypedServiceImplementation {
  ListModels: grpc.handleUnaryCall<_ember_v1_ListModelsRequest__Output, _ember_v1_ListModelsResponse>;
  
  Tokenize: grpc.handleUnaryCall<_ember_v1_TokenizeRequest__Output, _ember_v1_TokenizeResponse>;
  
}

export interface ModelsDefinition extends grpc.ServiceDefinition {
  ListModels: MethodDefinition<_ember_v1_ListModelsRequest, _ember_v1_ListModelsResponse, _ember_v1_ListModelsRequest__Output, _ember_v1_ListModelsResponse__Output>
  Tokenize: MethodDefinition<_ember_v1_TokenizeRequest, _ember_v1_TokenizeResponse, _ember_v1_TokenizeRequest__Output, _ember_v1_TokenizeResponse__Output>
}
