"""Server options side by side: unary 32 × concurrency 4 and one EmbedStream against raw ORT.

    python benchmarks/ab.py "" "--inference-workers 2 --intra-op-threads 1"
    python benchmarks/ab.py --raw-lanes "" "--inference-workers 1"   # with a second raw ORT reference

Each argument is one set of `ember serve` options (the empty string: the defaults). Every set gets
its own server, all started first; each round then measures raw ONNX Runtime (ideal batches) and
every server on the same texts, one after another, so the machine's drift falls on all alike.
Prints each measurement and the medians as ratios to raw ORT; writes out/ab.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex

import numpy as np

from bench import MODEL, OUT, EmberProcess, RawOrt, RawOrtLanes, export_models, stream_load, throughput, unary_load
from corpus import load_texts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="`ember serve` options, one quoted string per server")
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=50650)
    ap.add_argument("--raw-lanes", action="store_true",
                    help="also measure raw ORT on two one-thread sessions side by side (bench.RawOrtLanes)")
    args = ap.parse_args()
    texts = load_texts()[:args.texts]
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
            servers.append(EmberProcess(model_dir.parent, args.port + i, shlex.split(c)))
        for r in range(args.rounds):
            samples["raw ORT"].append(throughput(raw.encode_ideal, texts))
            if raw_lanes is not None:
                samples.setdefault("raw ORT, two one-thread sessions side by side | ideal batches", []).append(
                    throughput(raw_lanes.encode_ideal, texts))
            for c, srv in zip(args.configs, servers):
                name = c or "(defaults)"
                samples.setdefault(f"{name} | unary c4", []).append(
                    asyncio.run(unary_load(srv.address, texts, 32, 4)))
                samples.setdefault(f"{name} | stream", []).append(stream_load(srv.address, texts, 32)[0])
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in samples.items()), flush=True)
    finally:
        for srv in servers:
            srv.stop()
    ref = float(np.median(samples["raw ORT"]))
    print(f"\n{MODEL} fp32, {len(texts)} texts, medians of {args.rounds} rounds (texts/s)\n")
    print("| server options | measurement | texts/s | vs raw ORT |\n|---|---|---|---|")
    print(f"| raw ORT, least-cost batches | | {ref:.0f} | reference |")
    for k, v in samples.items():
        if k != "raw ORT":
            name, what = k.split(" | ")
            label = name if name.startswith("raw ORT") else f"`{name}`"
            print(f"| {label} | {what} | {np.median(v):.0f} | {np.median(v) / ref:.2f}× |")
    (OUT / "ab.json").write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
