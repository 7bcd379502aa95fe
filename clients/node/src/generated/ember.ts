import type * as grpc from '@grpc/grpc-js';
import type { EnumTypeDefinition, MessageTypeDefinition } from '@grpc/proto-loader';

import type { AdminClient as _ember_v1_AdminClient, AdminDefinition as _ember_v1_AdminDefinition } from './ember/v1/Admin';
import type { EmbedderClient as _ember_v1_EmbedderClient, EmbedderDefinition as _ember_v1_EmbedderDefinition } from './ember/v1/Embedder';
import type { ModelsClient as _ember_v1_ModelsClient, ModelsDefinition as _ember_v1_ModelsDefinition } from './ember/v1/Models';
import type { RerankerClient as _ember_v1_RerankerClient, RerankerDefinition as _ember_v1_RerankerDefinition } from './ember/v1/Reranker';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new(...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  ember: {
    v1: {
      Admin: SubtypeConstructor<typeof grpc.Client, _ember_v1_AdminClient> & { service: _ember_v1_AdminDefinition }
      EmbedOutput: EnumTypeDefinition
      EmbedRequest: MessageTypeDefinition
      EmbedResponse: MessageTypeDefinition
      Embedder: SubtypeConstructor<typeof grpc.Client, _ember_v1_EmbedderClient> & { service: _ember_v1_EmbedderDefinition }
      Embedding: MessageTypeDefinition
      Encoding: EnumTypeDefinition
      FloatVector: MessageTypeDefinition
      InputType: EnumTypeDefinition
      ListModelsRequest: MessageTypeDefinition
      ListModelsResponse: MessageTypeDefinition
      ModelInfo: MessageTypeDefinition
      ModelRequest: MessageTypeDefinition
      ModelResponse: MessageTypeDefinition
      ModelTask: EnumTypeDefinition
      Models: SubtypeConstructor<typeof grpc.Client, _ember_v1_ModelsClient> & { service: _ember_v1_ModelsDefinition }
      MultiVector: MessageTypeDefinition
      Priority: EnumTypeDefinition
      QuantizationRanges: MessageTypeDefinition
      RerankRequest: MessageTypeDefinition
      RerankResponse: MessageTypeDefinition
      RerankResult: MessageTypeDefinition
      Reranker: SubtypeConstructor<typeof grpc.Client, _ember_v1_RerankerClient> & { service: _ember_v1_RerankerDefinition }
      RescanRequest: MessageTypeDefinition
      RescanResponse: MessageTypeDefinition
      SparseOptions: MessageTypeDefinition
      SparseVector: MessageTypeDefinition
      Timing: MessageTypeDefinition
      TokenizeRequest: MessageTypeDefinition
      TokenizeResponse: MessageTypeDefinition
      TokenizedInput: MessageTypeDefinition
      TruncationDirection: EnumTypeDefinition
      Usage: MessageTypeDefinition
    }
  }
}

