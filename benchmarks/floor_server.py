"""The least a Python gRPC server can add to one text's embedding: the reference for ember's path.

    python benchmarks/floor_server.py MODEL_DIR PORT

Serves `ember.v1.Embedder/Embed` with nothing but what raw ONNX Runtime does in `bench.py`
(tokenize, one session run with the same options, mean pooling, normalization), inline in a
`grpc.aio` handler, with ember's own response writer: no validation, prompts, cache, queue,
metrics or timing. `bench.py` times it with the same clients as ember, so the single-text table
shows how much of ember's distance to raw ORT is the Python gRPC stack itself and how much is
ember. Prints "ready" once it listens.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from ember import wire
from ember.manifest import read_manifest
from ember.v1 import ember_pb2_grpc as pb_grpc
from tokenizers import Tokenizer


class FloorEmbedder(pb_grpc.EmbedderServicer):
    def __init__(self, model_dir: Path):
        m = read_manifest(model_dir, verify=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1  # as bench.RawOrt
        self.session = ort.InferenceSession(str(model_dir / m.onnx_file), opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(m.max_tokens)

    async def Embed(self, request, context):
        ids = np.array([self.tok.encode(request.inputs[0]).ids], dtype=np.int64)
        h = self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                    "token_type_ids": np.zeros_like(ids)})[0]
        v = h.mean(axis=1)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return wire.embed_response(v, [ids.shape[1]], [False], packed=False)


async def serve(model_dir: Path, port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_EmbedderServicer_to_server(FloorEmbedder(model_dir), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2])))
