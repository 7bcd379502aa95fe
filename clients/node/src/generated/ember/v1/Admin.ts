// Original file: proto/ember/v1/ember.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { ModelRequest as _ember_v1_ModelRequest, ModelRequest__Output as _ember_v1_ModelRequest__Output } from '../../ember/v1/ModelRequest';
import type { ModelResponse as _ember_v1_ModelResponse, ModelResponse__Output as _ember_v1_ModelResponse__Output } from '../../ember/v1/ModelResponse';
import type { RescanRequest as _ember_v1_RescanRequest, RescanRequest__Output as _ember_v1_RescanRequest__Output } from '../../ember/v1/RescanRequest';
import type { RescanResponse as _ember_v1_RescanResponse, RescanResponse__Output as _ember_v1_RescanResponse__Output } from '../../ember/v1/RescanResponse';

export interface AdminClient extends grpc.Client {
  LoadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  LoadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  LoadModel(argument: _ember_v1_ModelRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  LoadModel(argument: _ember_v1_ModelRequest, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  loadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  loadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  loadModel(argument: _ember_v1_ModelRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  loadModel(argument: _ember_v1_ModelRequest, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  
  ReloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  ReloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  ReloadModel(argument: _ember_v1_ModelRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  ReloadModel(argument: _ember_v1_ModelRequest, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  reloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  reloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  reloadModel(argument: _ember_v1_ModelRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  reloadModel(argument: _ember_v1_ModelRequest, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  
  Rescan(argument: _ember_v1_RescanRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  Rescan(argument: _ember_v1_RescanRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  Rescan(argument: _ember_v1_RescanRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  Rescan(argument: _ember_v1_RescanRequest, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  rescan(argument: _ember_v1_RescanRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  rescan(argument: _ember_v1_RescanRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  rescan(argument: _ember_v1_RescanRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  rescan(argument: _ember_v1_RescanRequest, callback: grpc.requestCallback<_ember_v1_RescanResponse__Output>): grpc.ClientUnaryCall;
  
  UnloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  UnloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  UnloadModel(argument: _ember_v1_ModelRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  UnloadModel(argument: _ember_v1_ModelRequest, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  unloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  unloadModel(argument: _ember_v1_ModelRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  unloadModel(argument: _ember_v1_ModelRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  unloadModel(argument: _ember_v1_ModelRequest, callback: grpc.requestCallback<_ember_v1_ModelResponse__Output>): grpc.ClientUnaryCall;
  
}

export interface AdminHandlers extends grpc.UntypedServiceImplementation {
  LoadModel: grpc.handleUnaryCall<_ember_v1_ModelRequest__Output, _ember_v1_ModelResponse>;
  
  ReloadModel: grpc.handleUnaryCall<_ember_v1_ModelRequest__Output, _ember_v1_ModelResponse>;
  
  Rescan: grpc.handleUnaryCall<_ember_v1_RescanRequest__Output, _ember_v1_RescanResponse>;
  
  UnloadModel: grpc.handleUnaryCall<_ember_v1_ModelRequest__Output, _ember_v1_ModelResponse>;
  
}

export interface AdminDefinition extends grpc.ServiceDefinition {
  LoadModel: MethodDefinition<_ember_v1_ModelRequest, _ember_v1_ModelResponse, _ember_v1_ModelRequest__Output, _ember_v1_ModelResponse__Output>
  ReloadModel: MethodDefinition<_ember_v1_ModelRequest, _ember_v1_ModelResponse, _ember_v1_ModelRequest__Output, _ember_v1_ModelResponse__Output>
  Rescan: MethodDefinition<_ember_v1_RescanRequest, _ember_v1_RescanResponse, _ember_v1_RescanRequest__Output, _ember_v1_RescanResponse__Output>
  UnloadModel: MethodDefinition<_ember_v1_ModelRequest, _ember_v1_ModelResponse, _ember_v1_ModelRequest__Output, _ember_v1_ModelResponse__Output>
}
