// ember client for Node: typed stubs over @grpc/grpc-js.
//
// The types under ./generated are made from the .proto files by `make stubs` (proto-loader-gen-types);
// the .proto files themselves are loaded at run time from ../proto, with the same loader options.
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { ProtoGrpcType as EmberProto } from "./generated/ember";
import type { ProtoGrpcType as HealthProto } from "./generated/health";
import type { EmbedderClient } from "./generated/ember/v1/Embedder";
import type { RerankerClient } from "./generated/ember/v1/Reranker";
import type { ModelsClient } from "./generated/ember/v1/Models";
import type { HealthClient } from "./generated/grpc/health/v1/Health";
import type { Embedding__Output } from "./generated/ember/v1/Embedding";

// Must match the flags of `npm run gen`: the generated types describe objects loaded this way.
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [path.join(__dirname, "..", "proto")],
};

export interface EmberClients {
  embedder: EmbedderClient;
  reranker: RerankerClient;
  models: ModelsClient;
  health: HealthClient;
  metadata: grpc.Metadata;
  close(): void;
}

/**
 * Connect to an ember server ("host:port"). With `apiKey`, pass `clients.metadata` to each call
 * (it carries "authorization: Bearer <key>"); `tls` uses the system's roots.
 */
export function connect(address: string, options: { apiKey?: string; tls?: boolean } = {}): EmberClients {
  const def = protoLoader.loadSync(["ember/v1/ember.proto", "grpc/health/v1/health.proto"], LOADER_OPTIONS);
  const loaded = grpc.loadPackageDefinition(def) as unknown as EmberProto & HealthProto;
  const creds = options.tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure();
  const metadata = new grpc.Metadata();
  if (options.apiKey) metadata.set("authorization", `Bearer ${options.apiKey}`);
  const channelOptions = { "grpc.max_receive_message_length": 64 << 20 };
  const embedder = new loaded.ember.v1.Embedder(address, creds, channelOptions);
  const reranker = new loaded.ember.v1.Reranker(address, creds, channelOptions);
  const models = new loaded.ember.v1.Models(address, creds, channelOptions);
  const health = new loaded.grpc.health.v1.Health(address, creds, channelOptions);
  return {
    embedder, reranker, models, health, metadata,
    close() {
      for (const c of [embedder, reranker, models, health]) c.close();
    },
  };
}

/** The vectors of an EmbedResponse, whichever encoding the request asked for. */
export function vectors(embeddings: Embedding__Output[], dimensions: number): Float32Array[] {
  return embeddings.map((e) => {
    if (e.data === "packed" && e.packed) {
      const b = e.packed; // little-endian float32, `dimensions` of them
      const out = new Float32Array(dimensions);
      for (let i = 0; i < dimensions; i++) out[i] = b.readFloatLE(i * 4);
      return out;
    }
    return Float32Array.from(e.values?.values ?? []);
  });
}

/** Promise of a unary call: `await unary<EmbedResponse__Output>((cb) => c.embedder.Embed(req, md, opts, cb))`. */
export function unary<Res>(start: (cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((err, res) => (err ? reject(err) : resolve(res as Res)));
  });
}
