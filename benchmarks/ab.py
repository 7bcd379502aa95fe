"""Server options side by side: unary 32 × concurrency 4 and one EmbedStream against raw ORT.

    python benchmarks/ab.py "" "--inference-workers 2 --intra-op-threads 1"
    python benchmarks/ab.py --raw-lanes "" "--inference-workers 1"   # with a second raw ORT reference
    python benchmarks/ab.py --realtime "@1d0ef31" ""   # an earlier commit's server against this one
    python benchmarks/ab.py --single 1,2,4,8 "" "--inline-alone-ms 0"   # and clients sending single texts

Each argument is one set of `ember serve` options (the empty string: the defaults); one that
starts with `@REV` runs the server code of git revision REV (exported and built once under
out/revs/), and NAME=VALUE words before the options are set in that server's environment
(`"EMBER_X=1 --no-metrics"`). Every set gets its own server, all started first; each round then measures raw ONNX
Runtime (ideal batches) and every server on the same texts, one after another (in reverse order
every other round), so the machine's drift falls on all alike. With --realtime, each server is
also timed on single REALTIME texts idle and under a saturating BULK stream, as bench.py does.
With --single C1,C2,..., also the texts/s of C clients each sending one text per Embed call, back
to back (--single-texts texts in all, the first of the same texts).
Prints each measurement and the medians as ratios to raw ORT; writes out/ab.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from bench import (MODEL, OUT, EmberProcess, RawOrt, RawOrtLanes, _req, export_models, leading_assignments,
                   realtime_under_bulk, single_latencies, stream_load, throughput, unary_load)
from corpus import load_texts
from ember.v1 import ember_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent


def revision_env(rev: str) -> dict:
    """The environment in which `python -m ember` runs git revision rev's server code: its tree
    exported under out/revs/<commit>, extensions and stubs built in place (once)."""
    commit = subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=ROOT, text=True).strip()
    d = OUT / "revs" / commit
    if not (d / "import" / "ember").exists():
        subprocess.run(["rm", "-rf", str(d)], check=True)
        d.mkdir(parents=True)
        tree = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(d)], input=tree, check=True)
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=d, check=True)
        (d / "server" / "ext").symlink_to(d / "ext")  # the package maps ember.ext to ext/
        (d / "import").mkdir()
        (d / "import" / "ember").symlink_to(d / "server")
    return {**os.environ, "PYTHONPATH": str(d / "import")}


def parse_arm(config: str) -> tuple[str, list[str], dict[str, str]]:
    """An arm, `[@REV] [NAME=VALUE ...] [ember serve options]`: its git revision ("" for the working
    tree), its `ember serve` options and the environment variables set for it."""
    rev, config = "", config.lstrip()
    if config.startswith("@"):
        rev, _, config = config[1:].partition(" ")
    args, assigned = leading_assignments(config)
    return rev, args, assigned


def start(config: str, models_dir: Path, port: int) -> EmberProcess:
    rev, args, assigned = parse_arm(config)
    return EmberProcess(models_dir, port, args, {**(revision_env(rev) if rev else {}), **assigned})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="`ember serve` options, one quoted string per server")
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=50650)
    ap.add_argument("--raw-lanes", action="store_true",
                    help="also measure raw ORT on two one-thread sessions side by side (bench.RawOrtLanes)")
    ap.add_argument("--realtime", action="store_true",
                    help="also time single REALTIME texts, idle and under a saturating BULK stream")
    ap.add_argument("--single", default="", metavar="C1,C2,...",
                    help="also single-text Embed calls from this many clients at once (texts/s)")
    ap.add_argument("--single-texts", type=int, default=600, help="texts per --single measurement")
    args = ap.parse_args()
    singles = [int(c) for c in args.single.split(",") if c]
    corpus = load_texts()
    texts, lat_texts = corpus[:args.texts], corpus[-250:]
    model_dir = export_models(OUT / "models", ("fp32",))["fp32"]
    raw = RawOrt(model_dir)
    raw.encode(texts[:256])
    raw_lanes = RawOrtLanes(model_dir) if args.raw_lanes else None
    if raw_lanes is not None:
        raw_lanes.encode_ideal(texts[:256])
    servers: list[EmberProcess] = []
    samples: dict[str, list[float]] = {"raw ORT": []}
    try:
        for i, c in enumerate(args.configs):  # inside the try: one that fails to start stops the others
            servers.append(start(c, model_dir.parent, args.port + i))
        for r in range(args.rounds):
            samples["raw ORT"].append(throughput(raw.encode_ideal, texts))
            if raw_lanes is not None:
                samples.setdefault("raw ORT, two one-thread sessions side by side | ideal batches", []).append(
                    throughput(raw_lanes.encode_ideal, texts))
            pairs = list(zip(args.configs, servers, strict=True))
            for c, srv in pairs if r % 2 == 0 else pairs[::-1]:
                name = c or "(defaults)"
                samples.setdefault(f"{name} | unary c4", []).append(
                    asyncio.run(unary_load(srv.address, texts, 32, 4)))
                samples.setdefault(f"{name} | stream", []).append(stream_load(srv.address, texts, 32)[0])
                for c in singles:
                    samples.setdefault(f"{name} | single text × {c} clients, texts/s", []).append(
                        asyncio.run(unary_load(srv.address, texts[:args.single_texts], 1, c)))
                if args.realtime:
                    stub = pb_grpc.EmbedderStub(grpc.insecure_channel(srv.address))
                    idle = single_latencies(lambda t, stub=stub: stub.Embed(_req([t])), lat_texts[:100], 0.1)
                    rt = realtime_under_bulk(srv.address, texts, lat_texts[100:])
                    for what, v in (("idle single text, open loop 10/s, p99 ms", np.percentile(idle, 99)),
                                    ("REALTIME under BULK, open loop 5/s, p50 ms",
                                     np.percentile(rt["ember_realtime_under_bulk_ms"], 50)),
                                    ("REALTIME under BULK, open loop 5/s, p99 ms",
                                     np.percentile(rt["ember_realtime_under_bulk_ms"], 99)),
                                    ("BULK during REALTIME / BULK solo",
                                     rt["bulk_tps_during_realtime"] / rt["bulk_solo_tps"])):
                        samples.setdefault(f"{name} | {what}", []).append(float(v))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in samples.items()), flush=True)
    finally:
        for srv in servers:
            srv.stop()
    ref = float(np.median(samples["raw ORT"]))
    print(f"\n{MODEL} fp32, {len(texts)} texts, medians of {args.rounds} rounds (texts/s)\n")
    print("| server options | measurement | value | vs raw ORT |\n|---|---|---|---|")
    print(f"| raw ORT, least-cost batches | texts/s | {ref:.0f} | reference |")
    for k, v in samples.items():
        if k != "raw ORT":
            name, what = k.split(" | ")
            label = name if name.startswith("raw ORT") else f"`{name}`"
            if what in ("unary c4", "stream", "ideal batches"):
                print(f"| {label} | {what}, texts/s | {np.median(v):.0f} | {np.median(v) / ref:.2f}× |")
            else:
                print(f"| {label} | {what} | {np.median(v):.2f} | |")
    (OUT / "ab.json").write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
