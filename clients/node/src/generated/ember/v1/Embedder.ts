// Original file: proto/ember/v1/ember.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { EmbedRequest as _ember_v1_EmbedRequest, EmbedRequest__Output as _ember_v1_EmbedRequest__Output } from '../../ember/v1/EmbedRequest';
import type { EmbedResponse as _ember_v1_EmbedResponse, EmbedResponse__Output as _ember_v1_EmbedResponse__Output } from '../../ember/v1/EmbedResponse';

export interface EmbedderClient extends grpc.Client {
  Embed(argument: _ember_v1_EmbedRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  Embed(argument: _ember_v1_EmbedRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  Embed(argument: _ember_v1_EmbedRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  Embed(argument: _ember_v1_EmbedRequest, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  embed(argument: _ember_v1_EmbedRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  embed(argument: _ember_v1_EmbedRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  embed(argument: _ember_v1_EmbedRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  embed(argument: _ember_v1_EmbedRequest, callback: grpc.requestCallback<_ember_v1_EmbedResponse__Output>): grpc.ClientUnaryCall;
  
  EmbedStream(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_EmbedRequest, _ember_v1_EmbedResponse__Output>;
  EmbedStream(options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_EmbedRequest, _ember_v1_EmbedResponse__Output>;
  embedStream(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_EmbedRequest, _ember_v1_EmbedResponse__Output>;
  embedStream(options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_EmbedRequest, _ember_v1_EmbedResponse__Output>;
  
}

export interface EmbedderHandlers extends grpc.UntypedServiceImplementation {
  Embed: grpc.handleUnaryCall<_ember_v1_EmbedRequest__Output, _ember_v1_EmbedResponse>;
  
  EmbedStream: grpc.handleBidiStreamingCall<_ember_v1_EmbedRequest__Output, _ember_v1_EmbedResponse>;
  
}

export interface EmbedderDefinition extends grpc.ServiceDefinition {
  Embed: MethodDefinition<_ember_v1_EmbedRequest, _ember_v1_EmbedResponse, _ember_v1_EmbedRequest__Output, _ember_v1_EmbedResponse__Output>
  EmbedStream: MethodDefinition<_ember_v1_EmbedRequest, _ember_v1_EmbedResponse, _ember_v1_EmbedRequest__Output, _ember_v1_EmbedResponse__Output>
}
