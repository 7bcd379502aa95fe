// ember from Node: health check, unary Embed, a bidirectional EmbedStream of 10,000 inputs (every
// id answered exactly once), and Rerank over gRPC; with an HTTP base URL, also `/v1/embeddings`
// through npm's `openai` package, as any OpenAI-compatible client calls it.
//
//   node dist/example.js [host:port] [http://host:8080]        (default localhost:50051, no HTTP)
//
// Exits 0 and prints a JSON summary on its last line when every check held, 1 otherwise.
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { connect, unary, vectors, EmberClients } from "./client";
import type { EmbedResponse__Output } from "./generated/ember/v1/EmbedResponse";
import type { RerankResponse__Output } from "./generated/ember/v1/RerankResponse";
import type { HealthCheckResponse__Output } from "./generated/grpc/health/v1/HealthCheckResponse";

const address = process.argv[2] ?? "localhost:50051";
const httpBase = process.argv[3];
const STREAM_INPUTS = 10_000;
const PER_MESSAGE = 100;

function fail(msg: string): never {
  throw new Error(msg);
}

const opts = (): grpc.CallOptions => ({ deadline: Date.now() + 30_000 });

async function waitServing(c: EmberClients): Promise<string> {
  const until = Date.now() + 60_000;
  for (;;) {
    try {
      const r = await unary<HealthCheckResponse__Output>((cb) => c.health.Check({ service: "" }, c.metadata, opts(), cb));
      if (r.status === "SERVING") return r.status;
    } catch (e) {
      if (Date.now() > until) throw e;
    }
    if (Date.now() > until) fail("server not SERVING after 60 s");
    await new Promise((r) => setTimeout(r, 200));
  }
}

function embedStream(c: EmberClients): Promise<{ ids: number; inputs: number; dimensions: number }> {
  return new Promise((resolve, reject) => {
    const call = c.embedder.EmbedStream(c.metadata);
    const seen = new Map<string, number>();
    let inputs = 0;
    let dimensions = 0;
    call.on("data", (resp: EmbedResponse__Output) => {
      seen.set(resp.request_id, (seen.get(resp.request_id) ?? 0) + 1);
      const v = vectors(resp.embeddings, resp.dimensions);
      if (v.length !== PER_MESSAGE) reject(new Error(`message ${resp.request_id}: ${v.length} embeddings`));
      inputs += v.length;
      dimensions = resp.dimensions;
    });
    call.on("error", reject);
    call.on("end", () => {
      const messages = STREAM_INPUTS / PER_MESSAGE;
      for (let i = 0; i < messages; i++) {
        const n = seen.get(`m${i}`) ?? 0;
        if (n !== 1) return reject(new Error(`request id m${i} answered ${n} times`));
      }
      if (seen.size !== messages) return reject(new Error(`${seen.size} distinct ids answered, sent ${messages}`));
      resolve({ ids: seen.size, inputs, dimensions });
    });
    // Write with backpressure: wait for 'drain' when grpc-js's buffer is full.
    let i = 0;
    const pump = () => {
      while (i < STREAM_INPUTS / PER_MESSAGE) {
        const inputs = Array.from({ length: PER_MESSAGE }, (_, k) => `stream text ${i * PER_MESSAGE + k}`);
        const ok = call.write({ inputs, request_id: `m${i}`, priority: "PRIORITY_BULK",
                                encoding: "ENCODING_FLOAT32_BYTES" });
        i++;
        if (!ok) return void call.once("drain", pump);
      }
      call.end();
    };
    pump();
  });
}

async function main(): Promise<void> {
  const c = connect(address);
  try {
    const health = await waitServing(c);

    const emb = await unary<EmbedResponse__Output>((cb) => c.embedder.Embed(
      { inputs: ["hello world", "ember is fast"], encoding: "ENCODING_FLOAT32_BYTES" }, c.metadata, opts(), cb));
    const v = vectors(emb.embeddings, emb.dimensions);
    if (v.length !== 2 || emb.dimensions === 0) fail(`Embed: ${v.length} vectors of ${emb.dimensions}`);
    const norm = Math.sqrt(v[0].reduce((s, x) => s + x * x, 0));
    if (Math.abs(norm - 1) > 1e-3) fail(`Embed: vector norm ${norm}, expected 1`);
    console.log(`Embed: ${v.length} x ${emb.dimensions} from ${emb.model}, tokens ${emb.usage?.total_tokens}`);

    // The same texts as sign bits (ENCODING_UBINARY): ceil(dimensions / 8) bytes, first component in the high bit
    const bin = await unary<EmbedResponse__Output>((cb) => c.embedder.Embed(
      { inputs: ["hello world", "ember is fast"], encoding: "ENCODING_UBINARY" }, c.metadata, opts(), cb));
    const bits = bin.embeddings.map((e) => e.packed as Buffer);
    for (let k = 0; k < bits.length; k++) {
      if (bits[k].length !== Math.ceil(emb.dimensions / 8)) fail(`UBINARY: ${bits[k].length} bytes`);
      for (let i = 0; i < emb.dimensions; i++) {
        const bit = (bits[k][i >> 3] >> (7 - (i & 7))) & 1;
        if (bit !== (v[k][i] > 0 ? 1 : 0)) fail(`UBINARY: bit ${i} of vector ${k} disagrees with its float's sign`);
      }
    }
    console.log(`Embed UBINARY: ${bits.length} x ${bits[0].length} bytes, every bit the sign of the float vector's`);

    const stream = await embedStream(c);
    console.log(`EmbedStream: ${stream.inputs} inputs in ${stream.ids} messages, every id answered once`);

    const docs = ["Kubernetes probes the gRPC health service", "Embers glow in the fireplace",
                  "A health check tells the orchestrator whether a server can take traffic"];
    const rr = await unary<RerankResponse__Output>((cb) => c.reranker.Rerank(
      { query: "how do I check that a server is healthy?", documents: docs, return_documents: true },
      c.metadata, opts(), cb));
    if (rr.results.length !== docs.length) fail(`Rerank: ${rr.results.length} results for ${docs.length} documents`);
    for (let k = 1; k < rr.results.length; k++) {
      if (rr.results[k].score > rr.results[k - 1].score) fail("Rerank: results not best first");
    }
    console.log(`Rerank: best "${rr.results[0].document}" (${rr.results[0].score.toFixed(4)})`);

    const summary: Record<string, unknown> = { client: "node", health, embed_dimensions: emb.dimensions,
                                               stream_inputs: stream.inputs, stream_ids: stream.ids,
                                               rerank_results: rr.results.length, binary_bytes: bits[0].length };
    if (httpBase) {
      // ember's OpenAI-compatible route, through the OpenAI SDK (the model: the server's default)
      const openai = new OpenAI({ baseURL: `${httpBase}/v1`, apiKey: "unused" });
      const r = await openai.embeddings.create({ model: emb.model, input: ["hello world", "ember is fast"] });
      const grpcFirst = vectors(emb.embeddings, emb.dimensions)[0];
      const httpFirst = r.data[0].embedding;
      let dot = 0;
      for (let k = 0; k < grpcFirst.length; k++) dot += grpcFirst[k] * httpFirst[k];
      if (r.data.length !== 2 || httpFirst.length !== emb.dimensions || dot < 0.99999) {
        fail(`/v1/embeddings: ${r.data.length} vectors of ${httpFirst.length}, cosine with gRPC ${dot}`);
      }
      console.log(`/v1/embeddings (openai SDK): ${r.data.length} x ${httpFirst.length}, cosine with gRPC ${dot.toFixed(6)}`);
      summary.openai_embedding_dimensions = httpFirst.length;
    }
    console.log(JSON.stringify(summary));
  } finally {
    c.close();
  }
}

main().catch((e) => {
  console.error(`example failed: ${e instanceof Error ? e.message : e}`);
  process.exit(1);
});
