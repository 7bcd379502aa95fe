"""The HTTP API against gRPC, on the same texts, in one run: `/v1/embeddings` in requests of 32 at
concurrency 1 / 4 / 16, float and base64, beside unary gRPC Embed (32 texts, the same
concurrencies) and one EmbedStream.

    python benchmarks/http_bench.py [--texts 2048] [--rounds 2]

One `ember serve` process on all-MiniLM-L6-v2 (fp32), called from this process: gRPC through
grpc.aio, HTTP through aiohttp's client (a keep-alive connection pool, as the OpenAI SDK keeps).
The arms take turns, round by round, in alternating order. Prints texts/s per arm (median of the
rounds) and the ratios to unary gRPC at the same concurrency, and the cost of writing one 384-d
vector as float JSON and as base64 (orjson, in this process); writes out/http_bench.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import MODEL, OUT, EmberProcess, export_models, stream_load, unary_load  # noqa: E402
from corpus import load_texts  # noqa: E402

BATCH = 32


async def http_load(base: str, texts: list[str], concurrency: int, fmt: str) -> float:
    chunks = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def call(chunk):
            body = {"model": MODEL, "input": chunk, "encoding_format": fmt}
            async with session.post(f"{base}/v1/embeddings", json=body) as r:
                data = await r.json(loads=orjson.loads)
                if r.status != 200 or len(data["data"]) != len(chunk):
                    raise RuntimeError(f"HTTP {r.status}: {str(data)[:200]}")

        await call(chunks[0])  # warm the connection
        it = iter(chunks)
        t0 = time.perf_counter()

        async def worker():
            for chunk in it:
                await call(chunk)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - t0)


def encode_cost_us() -> dict[str, float]:
    """µs to write one 384-d vector into a response body, as the server does: float JSON, base64."""
    import base64

    vectors = np.random.default_rng(0).standard_normal((BATCH, 384)).astype(np.float32)
    out = {}
    for fmt in ("float", "base64"):
        def body(fmt=fmt):
            if fmt == "float":
                data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
            else:
                data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                        for i, v in enumerate(vectors)]
            return orjson.dumps({"object": "list", "data": data}, option=orjson.OPT_SERIALIZE_NUMPY)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            size = len(body())
        out[fmt] = (time.perf_counter() - t0) / n / BATCH * 1e6
        out[f"{fmt}_bytes_per_vector"] = size / BATCH
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=50681)
    args = ap.parse_args()
    texts = load_texts()[:args.texts]
    models = export_models(Path(tempfile.gettempdir()) / "ember-bench-models", ("fp32",))
    server = EmberProcess(models["fp32"].parent, args.port, ["--http-port", str(args.port + 1)])
    base = f"http://127.0.0.1:{args.port + 1}"
    arms = {}
    for c in (1, 4, 16):
        arms[f"gRPC unary c{c}"] = lambda c=c: asyncio.run(unary_load(server.address, texts, BATCH, c))
        arms[f"HTTP base64 c{c}"] = lambda c=c: asyncio.run(http_load(base, texts, c, "base64"))
        arms[f"HTTP float c{c}"] = lambda c=c: asyncio.run(http_load(base, texts, c, "float"))
    arms["gRPC EmbedStream"] = lambda: stream_load(server.address, texts, 64)[0]
    rates: dict[str, list[float]] = {name: [] for name in arms}
    try:
        for r in range(args.rounds):
            for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
                rates[name].append(arms[name]())
                print(f"round {r + 1}: {name}: {rates[name][-1]:.0f} texts/s", flush=True)
    finally:
        server.stop()
    med = {name: statistics.median(v) for name, v in rates.items()}
    cost = encode_cost_us()
    print(f"\n| arm | texts/s (median of {args.rounds}) | vs gRPC unary, same concurrency |\n|---|---|---|")
    for name, v in med.items():
        c = name.rsplit(" ", 1)[-1]
        ref = med.get(f"gRPC unary {c}")
        print(f"| {name} | {v:.0f} | {f'{v / ref:.2f}×' if ref and not name.startswith('gRPC') else ''} |")
    print(f"\nwriting one 384-d vector: float JSON {cost['float']:.2f} µs ({cost['float_bytes_per_vector']:.0f} "
          f"bytes), base64 {cost['base64']:.2f} µs ({cost['base64_bytes_per_vector']:.0f} bytes)")
    OUT.mkdir(exist_ok=True)
    (OUT / "http_bench.json").write_text(json.dumps({"texts": len(texts), "texts_per_s": rates, "encode_us": cost},
                                                    indent=1))


if __name__ == "__main__":
    main()
