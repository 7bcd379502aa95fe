"""The least a Python gRPC server can add to one text's embedding: the reference for ember's path.

    python benchmarks/floor_server.py MODEL_DIR PORT [--fixed] [--record PATH] [--ort-config K=V]
                                      [--pause-ms MS] [--sync | --grpclib]

Serves `ember.v1.Embedder/Embed` with nothing but what raw ONNX Runtime does in `bench.py`
(tokenize, one session run with the same options, mean pooling, normalization), inline in a
`grpc.aio` handler, with ember's own response writer: no validation, prompts, cache, queue,
metrics or timing. `bench.py` times it with the same clients as ember, so the single-text table
shows how much of ember's distance to raw ORT is the Python gRPC stack itself and how much is
ember. Prints "ready" once it listens.

With --fixed the handler does everything but the session run (it pools a fixed
hidden state of the text's length instead), the gRPC round trip with the same request and
response; with --record it notes the Unix ns at which each call's handler starts and ends, and
writes them as JSON lines to PATH when stopped (SIGTERM). --ort-config KEY=VALUE (repeatable) adds
an ONNX Runtime session config entry, e.g. session.force_spinning_stop=1. --pause-ms MS busy-waits
that long in the handler before the session run (or in its place, with --fixed): a pause that
keeps the event-loop thread busy and touches next to no memory. --sync serves the same handler on
grpc's synchronous server (a thread pool) instead of grpc.aio. --grpclib serves it on grpclib: a
gRPC server written in Python on asyncio (its HTTP/2 is the h2 package), so a call has no gRPC
core, no poller thread and no hop between threads.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from ember import wire
from ember.manifest import read_manifest
from ember.v1 import ember_pb2_grpc as pb_grpc
from tokenizers import Tokenizer


class FloorEmbedder(pb_grpc.EmbedderServicer):
    def __init__(self, model_dir: Path, fixed: bool = False, ort_config: tuple[str, ...] = (), record: bool = False,
                 pause_s: float = 0.0):
        m = read_manifest(model_dir, verify=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1  # as bench.RawOrt
        for entry in ort_config:
            opts.add_session_config_entry(*entry.split("=", 1))
        self.session = ort.InferenceSession(str(model_dir / m.onnx_file), opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(m.max_tokens)
        self.fixed = np.random.default_rng(0).random((1, m.max_tokens, m.dimensions), dtype=np.float32) \
            if fixed else None
        # (start, end) Unix ns of each handler run, when recorded
        self.calls: list[tuple[int, int]] | None = [] if record else None
        self.pause_s = pause_s

    async def Embed(self, request, context):
        return self.embed(request)

    def embed(self, request):
        start = time.time_ns()
        ids = np.array([self.tok.encode(request.inputs[0]).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        if self.pause_s:
            until = time.perf_counter() + self.pause_s
            while time.perf_counter() < until:
                pass
        h = self.session.run(None, feeds)[0] if self.fixed is None else self.fixed[:, :ids.shape[1]]
        v = h.mean(axis=1)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        response = wire.embed_response(v, [ids.shape[1]], [False], packed=False)
        if self.calls is not None:
            self.calls.append((start, time.time_ns()))
        return response


def grpc_option(entry: str) -> tuple[str, int | str]:
    """A --grpc-arg KEY=VALUE as a grpc server option: VALUE an int where it reads as one."""
    key, _, value = entry.partition("=")
    return key, int(value) if value.lstrip("-").isdigit() else value


def write_and_exit(embedder: FloorEmbedder, record: Path) -> None:
    """On SIGTERM with --record: each call's handler (start, end) as JSON lines, then exit."""
    record.write_text("".join(json.dumps(c) + "\n" for c in embedder.calls))
    os._exit(0)


class SyncEmbedder(pb_grpc.EmbedderServicer):
    def __init__(self, floor: FloorEmbedder):
        self.floor = floor

    def Embed(self, request, context):
        return self.floor.embed(request)


def serve_sync(model_dir: Path, port: int, fixed: bool, record: Path | None, ort_config: tuple[str, ...],
               pause_s: float, grpc_args: tuple[str, ...]) -> None:
    """The same handler on grpc's synchronous server: the thread that polls the completion queue
    hands each call to a pool thread. (Not inline on the polling thread: a unary handler waits
    for its request message, which that thread delivers.)"""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[grpc_option(e) for e in grpc_args])
    embedder = FloorEmbedder(model_dir, fixed, ort_config, record is not None, pause_s)
    if record is not None:
        signal.signal(signal.SIGTERM, lambda *_: write_and_exit(embedder, record))
    pb_grpc.add_EmbedderServicer_to_server(SyncEmbedder(embedder), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


class GrpclibEmbedder:
    """The same handler on grpclib: the method table is written out (grpclib's own stubs are made by
    a protoc plugin this project does not otherwise need)."""

    def __init__(self, floor: FloorEmbedder):
        self.floor = floor

    async def embed(self, stream) -> None:
        await stream.send_message(self.floor.embed(await stream.recv_message()))

    def __mapping__(self):
        from grpclib.const import Cardinality, Handler

        from ember.v1 import ember_pb2 as pb
        return {"/ember.v1.Embedder/Embed": Handler(self.embed, Cardinality.UNARY_UNARY, pb.EmbedRequest,
                                                    pb.EmbedResponse)}


async def serve_grpclib(model_dir: Path, port: int, fixed: bool, record: Path | None, ort_config: tuple[str, ...],
                        pause_s: float) -> None:
    from grpclib.server import Server

    embedder = FloorEmbedder(model_dir, fixed, ort_config, record is not None, pause_s)
    if record is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, write_and_exit, embedder, record)
    server = Server([GrpclibEmbedder(embedder)])
    await server.start("127.0.0.1", port)
    print("ready", flush=True)
    await server.wait_closed()


async def serve(model_dir: Path, port: int, fixed: bool, record: Path | None, ort_config: tuple[str, ...],
                pause_s: float, grpc_args: tuple[str, ...] = ()) -> None:
    server = grpc.aio.server(options=[grpc_option(e) for e in grpc_args])
    embedder = FloorEmbedder(model_dir, fixed, ort_config, record is not None, pause_s)
    if record is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, write_and_exit, embedder, record)
    pb_grpc.add_EmbedderServicer_to_server(embedder, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("port", type=int)
    ap.add_argument("--fixed", action="store_true", help="no session run: a fixed hidden state")
    ap.add_argument("--record", type=Path, help="write each call's handler start/end here when stopped")
    ap.add_argument("--ort-config", action="append", default=[], metavar="KEY=VALUE",
                    help="an ONNX Runtime session config entry (repeatable)")
    ap.add_argument("--pause-ms", type=float, default=0.0, help="busy-wait this long in the handler before the run")
    ap.add_argument("--grpc-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a gRPC core channel argument for the server, e.g. grpc.http2.bdp_probe=0 (repeatable)")
    ap.add_argument("--sync", action="store_true", help="grpc's synchronous server (a thread pool) instead of grpc.aio")
    ap.add_argument("--grpclib", action="store_true", help="grpclib (gRPC in Python on asyncio) instead of grpc.aio")
    a = ap.parse_args()
    if a.grpclib:
        asyncio.run(serve_grpclib(a.model_dir, a.port, a.fixed, a.record, tuple(a.ort_config), a.pause_ms / 1e3))
        raise SystemExit(0)
    if a.sync:
        serve_sync(a.model_dir, a.port, a.fixed, a.record, tuple(a.ort_config), a.pause_ms / 1e3,
                   tuple(a.grpc_arg))
        raise SystemExit(0)
    asyncio.run(serve(a.model_dir, a.port, a.fixed, a.record, tuple(a.ort_config), a.pause_ms / 1e3,
                      tuple(a.grpc_arg)))
