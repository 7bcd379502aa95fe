// Original file: proto/ember/v1/ember.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { RerankRequest as _ember_v1_RerankRequest, RerankRequest__Output as _ember_v1_RerankRequest__Output } from '../../ember/v1/RerankRequest';
import type { RerankResponse as _ember_v1_RerankResponse, RerankResponse__Output as _ember_v1_RerankResponse__Output } from '../../ember/v1/RerankResponse';

export interface RerankerClient extends grpc.Client {
  Rerank(argument: _ember_v1_RerankRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  Rerank(argument: _ember_v1_RerankRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  Rerank(argument: _ember_v1_RerankRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  Rerank(argument: _ember_v1_RerankRequest, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  rerank(argument: _ember_v1_RerankRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  rerank(argument: _ember_v1_RerankRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  rerank(argument: _ember_v1_RerankRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  rerank(argument: _ember_v1_RerankRequest, callback: grpc.requestCallback<_ember_v1_RerankResponse__Output>): grpc.ClientUnaryCall;
  
  RerankStream(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_RerankRequest, _ember_v1_RerankResponse__Output>;
  RerankStream(options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_RerankRequest, _ember_v1_RerankResponse__Output>;
  rerankStream(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_RerankRequest, _ember_v1_RerankResponse__Output>;
  rerankStream(options?: grpc.CallOptions): grpc.ClientDuplexStream<_ember_v1_RerankRequest, _ember_v1_RerankResponse__Output>;
  
}

export interface RerankerHandlers extends grpc.UntypedServiceImplementation {
  Rerank: grpc.handleUnaryCall<_ember_v1_RerankRequest__Output, _ember_v1_RerankResponse>;
  
  RerankStream: grpc.handleBidiStreamingCall<_ember_v1_RerankRequest__Output, _ember_v1_RerankResponse>;
  
}

export interface RerankerDefinition extends grpc.ServiceDefinition {
  Rerank: MethodDefinition<_ember_v1_RerankRequest, _ember_v1_RerankResponse, _ember_v1_RerankRequest__Output, _ember_v1_RerankResponse__Output>
  RerankStream: MethodDefinition<_ember_v1_RerankRequest, _ember_v1_RerankResponse, _ember_v1_RerankRequest__Output, _ember_v1_RerankResponse__Output>
}
