"""Soak: mixed traffic against a real `ember serve` process for a while; RSS, open file
descriptors and threads of the server sampled over time must stay flat.

    python benchmarks/soak.py --minutes 30          # what `make soak` runs (SOAK_MINUTES=30)
    python benchmarks/soak.py --minutes 2           # a smoke run

Traffic, from several client threads at once: unary Embed of 1-64 real texts (REALTIME and BULK,
both encodings, Matryoshka sizes), Rerank, EmbedStream of a few hundred texts, streams cancelled
mid-way, unary calls with deadlines too short to meet, requests with bad fields, and random
bytes as a request body. Each kind of call must get its own answer (EXPECTED: OK for valid
requests, INVALID_ARGUMENT or NOT_FOUND for bad ones, CANCELLED, DEADLINE_EXCEEDED), or
RESOURCE_EXHAUSTED when the admission queue is full; anything else (a bad request answered OK,
INTERNAL, UNKNOWN, a hang) is counted as a failure. Writes benchmarks/out/soak.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import OUT, EmberProcess, export_models  # noqa: E402
from corpus import load_texts  # noqa: E402

from ember.v1 import ember_pb2 as pb  # noqa: E402
from ember.v1 import ember_pb2_grpc as pb_grpc  # noqa: E402

C = grpc.StatusCode
# The answers each kind of call may get; RESOURCE_EXHAUSTED (the admission queue full) may answer any.
EXPECTED = {"embed": {C.OK}, "bulk": {C.OK}, "rerank": {C.OK}, "stream": {C.OK}, "cancel": {C.CANCELLED},
            "deadline": {C.DEADLINE_EXCEEDED}, "bad": {C.INVALID_ARGUMENT, C.NOT_FOUND},
            "garbage": {C.INVALID_ARGUMENT}}


def unexpected_answers(counts: dict[str, int]) -> dict[str, int]:
    """The "kind:CODE" counts whose code that kind of call should never get."""
    unexpected = {}
    for key, n in counts.items():
        kind, _, name = key.partition(":")
        if C[name] != C.RESOURCE_EXHAUSTED and C[name] not in EXPECTED[kind]:
            unexpected[key] = n
    return unexpected


def proc_stats(pid: int) -> dict:
    rss = threads = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return {"rss_mb": round(rss, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


class Traffic:
    def __init__(self, address: str, texts: list[str], seed: int):
        self.channel = grpc.insecure_channel(address)
        self.embedder = pb_grpc.EmbedderStub(self.channel)
        self.reranker = pb_grpc.RerankerStub(self.channel)
        self.raw = self.channel.unary_unary("/ember.v1.Embedder/Embed")  # bytes in, bytes out
        self.texts = texts
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}

    def _count(self, kind: str, code: grpc.StatusCode) -> None:
        key = f"{kind}:{code.name}"
        self.counts[key] = self.counts.get(key, 0) + 1

    def _call(self, kind: str, fn) -> None:
        try:
            fn()
            self._count(kind, grpc.StatusCode.OK)
        except grpc.RpcError as e:
            self._count(kind, e.code())

    def one(self) -> None:
        r, texts = self.rng, self.texts
        pick = lambda n: r.sample(texts, n)  # noqa: E731
        kind = r.choices(["embed", "bulk", "rerank", "stream", "cancel", "deadline", "bad", "garbage"],
                         weights=[30, 10, 15, 8, 5, 5, 5, 2])[0]
        if kind in ("embed", "bulk"):
            req = pb.EmbedRequest(inputs=pick(r.randint(1, 64)), dimensions=r.choice([0, 0, 128, 64]),
                                  encoding=r.choice([pb.ENCODING_FLOAT, pb.ENCODING_FLOAT32_BYTES]),
                                  priority=pb.PRIORITY_BULK if kind == "bulk" else pb.PRIORITY_REALTIME)
            self._call(kind, lambda: self.embedder.Embed(req, timeout=60))
        elif kind == "rerank":
            req = pb.RerankRequest(query=r.choice(texts), documents=pick(r.randint(1, 32)), top_n=r.randint(0, 1))
            self._call(kind, lambda: self.reranker.Rerank(req, timeout=60))
        elif kind == "stream":
            reqs = [pb.EmbedRequest(inputs=pick(8), priority=pb.PRIORITY_BULK) for _ in range(r.randint(10, 40))]

            def run():
                n = sum(1 for _ in self.embedder.EmbedStream(iter(reqs), timeout=120))
                assert n == len(reqs), f"stream answered {n} of {len(reqs)}"
            self._call(kind, run)
        elif kind == "cancel":
            call = self.embedder.EmbedStream(iter([pb.EmbedRequest(inputs=pick(16)) for _ in range(200)]))

            def run():
                for i, _ in enumerate(call):
                    if i == 3:
                        call.cancel()
            self._call(kind, run)
        elif kind == "deadline":
            self._call(kind, lambda: self.embedder.Embed(pb.EmbedRequest(inputs=pick(64)), timeout=0.002))
        elif kind == "bad":
            req = r.choice([pb.EmbedRequest(inputs=[]), pb.EmbedRequest(inputs=["x"], dimensions=4096),
                            pb.EmbedRequest(inputs=["x"], model="no-such-model"),
                            pb.EmbedRequest(inputs=["ok", ""]), pb.EmbedRequest(inputs=["x"] * 5000)])
            self._call(kind, lambda: self.embedder.Embed(req, timeout=30))
        else:
            body = bytes(r.getrandbits(8) for _ in range(r.randint(1, 200)))
            self._call(kind, lambda: self.raw(body, timeout=30))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--sample-seconds", type=float, default=0)
    ap.add_argument("--port", type=int, default=50581)
    args = ap.parse_args()
    duration = args.minutes * 60
    every = args.sample_seconds or max(5.0, duration / 30)
    OUT.mkdir(parents=True, exist_ok=True)
    texts = load_texts()
    models = export_models(OUT / "models", ("fp32",))
    srv = EmberProcess(models["fp32"].parent, args.port, [])
    stop = threading.Event()
    workers = [Traffic(srv.address, texts, seed) for seed in range(args.clients)]

    def loop(t: Traffic) -> None:
        while not stop.is_set():
            t.one()

    samples = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for th in threads:
        th.start()
    try:
        while time.monotonic() - t0 < duration:
            time.sleep(min(every, max(0.0, duration - (time.monotonic() - t0))))
            s = {"t_s": round(time.monotonic() - t0), **proc_stats(srv.proc.pid),
                 "calls": sum(sum(w.counts.values()) for w in workers)}
            samples.append(s)
            print(json.dumps(s), flush=True)
        stop.set()
        for th in threads:
            th.join(180)
        time.sleep(2)
        final = proc_stats(srv.proc.pid)
    finally:
        srv.stop()
    counts: dict[str, int] = {}
    for w in workers:
        for k, v in w.counts.items():
            counts[k] = counts.get(k, 0) + v
    unexpected = unexpected_answers(counts)
    # Flat: the last third of the run against the first sample after warm-up (the second one).
    base = samples[1] if len(samples) > 2 else samples[0]
    tail = samples[len(samples) * 2 // 3:]
    growth = {k: max(s[k] for s in tail) - base[k] for k in ("rss_mb", "fds", "threads")}
    ok = not unexpected and growth["rss_mb"] <= 0.10 * base["rss_mb"] + 20 and growth["fds"] <= 4 \
        and growth["threads"] <= 4
    result = {"minutes": args.minutes, "clients": args.clients, "calls": sum(counts.values()), "counts": counts,
              "unexpected": unexpected, "samples": samples, "after_traffic": final, "growth_vs_warm": growth,
              "flat": ok}
    (OUT / "soak.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Soak: {args.minutes:g} min, {args.clients} clients, {result['calls']} calls", "",
             "| t (s) | RSS (MB) | fds | threads | calls |", "|---|---|---|---|---|"]
    lines += [f"| {s['t_s']} | {s['rss_mb']} | {s['fds']} | {s['threads']} | {s['calls']} |" for s in samples]
    lines += ["", f"after traffic stopped: {final}", f"growth (last third vs warm): {growth}",
              f"answers: {json.dumps(counts, sort_keys=True)}", f"unexpected codes: {unexpected or 'none'}",
              f"verdict: {'flat' if ok else 'NOT FLAT / FAILED'}"]
    (OUT / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-6:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
