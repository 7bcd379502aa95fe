"""What the Python gRPC server costs around a pause, against a compiled (Go) gRPC server.

    make clients && python benchmarks/front_end.py [--pauses 0,2,5.5] [--processes 2] [--texts 200]
                                                   [--grpclib]

ember's single text is raw ONNX Runtime's run plus a gRPC round trip around it, and that round trip
grows with the pause it brackets (benchmarks/RESULTS.md, thirteenth session). This asks how much of
it a compiled server would save. Both servers answer the same Embed calls from the same Go client
(`ember-latency`) with the same 384-d response after a busy wait of the same length, standing in
for the model's run:
- `floor_server.py --fixed --pause-ms P`: a bare Python grpc.aio handler (it also tokenizes the
  text and pools a fixed hidden state, ~0.1-0.2 ms, as the floor does);
- `ember-floor PORT P` (clients/go/src/ember/floor): a grpc-go server that does nothing else;
- with --grpclib, also `floor_server.py --grpclib --fixed --pause-ms P`: the Python handler on
  grpclib, gRPC written in Python on asyncio (no gRPC core, no thread hops).
Arms take turns on bench.py's single-text texts (`bench.interleaved`), closed loop, then open loop
(each call after an idle stretch). Prints each arm's p50 and p50 − pause (the round trip and the
handler's own work), and writes out/front_end.json.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from bench import (GO_LATENCY, OUT, PACED_TEXTS, FloorProcess, GoClient, ServerProcess, export_models,
                   interleaved)
from corpus import load_texts

GO_FLOOR = GO_LATENCY.with_name("ember-floor")


class GoFloor(ServerProcess):
    """`ember-floor`: a grpc-go Embed server with a busy wait and a fixed answer."""

    def __init__(self, port: int, pause_ms: float):
        super().__init__("ember-floor", [str(GO_FLOOR), str(port), str(pause_ms)], port)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pauses", default="0,2,5.5", help="busy waits in ms, comma-separated")
    ap.add_argument("--processes", type=int, default=2, help="server processes per arm")
    ap.add_argument("--texts", type=int, default=200, help="closed-loop texts (the open loop takes up to 240)")
    ap.add_argument("--no-open", action="store_true", help="closed loop only")
    ap.add_argument("--grpclib", action="store_true", help="add the Python handler on grpclib")
    ap.add_argument("--port", type=int, default=50860)
    args = ap.parse_args()
    for binary in (GO_LATENCY, GO_FLOOR):
        if not binary.is_file():
            raise SystemExit(f"{binary} is missing: run `make clients`")
    pauses = [float(p) for p in args.pauses.split(",")]
    texts = load_texts()[-args.texts:]  # bench.py's single-text texts
    model_dir = export_models(OUT / "models", ("fp32",))["fp32"]
    kinds = {  # server → how to start one on (port, pause in ms)
        "Python grpc.aio (floor_server.py --fixed)":
            lambda port, ms: FloorProcess(model_dir, port, ("--fixed", "--pause-ms", str(ms))),
        "Go grpc-go (ember-floor)": GoFloor,
    }
    if args.grpclib:
        kinds["Python grpclib (floor_server.py --grpclib --fixed)"] = \
            lambda port, ms: FloorProcess(model_dir, port, ("--grpclib", "--fixed", "--pause-ms", str(ms)))
    servers, clients, arms = [], [], []
    arm_of: dict[str, tuple[str, float]] = {}  # arm → (server, pause in ms)
    try:
        port = args.port
        for k in range(args.processes):
            for ms in pauses:
                for name, start in kinds.items():
                    servers.append(start(port, ms))
                    clients.append(GoClient(servers[-1].address))
                    arm = f"{name}, pause {ms:g} ms"
                    arm_of[arm] = (name, ms)
                    arms.append((f"{arm}#{k}", clients[-1].embed, True))
                    port += 1
        for text in texts[:10]:  # warm up
            for _, fn, _ in arms:
                fn(text)
        results = {}
        loops = [("closed", texts, False)] + ([] if args.no_open else [("open", texts[:PACED_TEXTS], True)])
        for loop, loop_texts, paced in loops:
            pooled: dict[str, list[float]] = {}
            for key, v in interleaved(arms, loop_texts, paced).items():
                pooled.setdefault(key.rsplit("#", 1)[0], []).extend(v)
            results[loop] = pooled
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()
    for loop, pooled in results.items():
        print(f"\n{loop} loop, Go client, p50 (µs)")
        print("| server | pause | total | total − pause |\n|---|---|---|---|")
        for arm, v in pooled.items():
            p50 = float(np.median(v)) * 1e3
            name, ms = arm_of[arm]
            print(f"| {name} | {ms:g} ms | {p50:.0f} | {p50 - ms * 1e3:.0f} |")
    out = OUT / "front_end.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"samples: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
