"""`ember embed` of one job on one replica and on two, in one run: what the extra replica gives.

    python benchmarks/replicas.py [--texts 4000] [--rounds 2]

Two `ember serve` processes on the embedded all-MiniLM-L6-v2, each pinned to one core (`taskset`)
with one intra-op thread and one inference worker, so that each is one core's worth of server.
Each round runs the same `ember embed` (a JSONL file of real texts, .npy out, a fresh output each
time) against the first replica alone, then against both (`--server a,b`: one stream per
replica), in alternating order, and times it. Prints texts/s per arm, the median, and the ratio;
writes out/replicas.json. On a 2-core machine the client and both servers share the two cores,
so the scale-up is bounded by that: report it as measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load_texts  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(core: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "ember", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--intra-op-threads", "1",
                             "--inference-workers", "1", "--log-level", "error"])
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                channel.close()
                return proc, address
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"replica on core {core} not SERVING")


def job(src: Path, out: Path, server: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ember", "embed", str(src), "-o", str(out), "--server", server,
                        "--no-progress", "--restart"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    texts = load_texts()[:args.texts]
    tmp = Path(tempfile.mkdtemp(prefix="ember-replicas-"))
    src = tmp / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    cores = sorted(os.sched_getaffinity(0))
    servers = [serve(cores[0]), serve(cores[1 % len(cores)])]
    arms = {"one replica": servers[0][1], "two replicas": f"{servers[0][1]},{servers[1][1]}"}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    try:
        job(src, tmp / "warm.npy", arms["two replicas"])  # warm both servers
        for r in range(args.rounds):
            for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
                seconds = job(src, tmp / "out.npy", arms[name])
                rates[name].append(len(texts) / seconds)
                print(f"round {r + 1}: {name}: {len(texts)} texts in {seconds:.1f} s, {rates[name][-1]:.0f} texts/s")
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(30)
    one, two = (statistics.median(rates[n]) for n in arms)
    print(f"\n| arm | texts/s (median of {args.rounds}) | vs one replica |\n|---|---|---|\n"
          f"| one replica | {one:.0f} | 1.00× |\n| two replicas | {two:.0f} | {two / one:.2f}× |")
    OUT.mkdir(exist_ok=True)
    (OUT / "replicas.json").write_text(json.dumps({"texts": len(texts), "texts_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
