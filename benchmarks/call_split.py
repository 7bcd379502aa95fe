"""Where a single text's time goes in a Python gRPC server: before, in and after its handler.

    python benchmarks/call_split.py [--processes 2] [--texts 200] [--no-open] [--also "FLOOR ARGS" ...]

ember's distance to raw ONNX Runtime on one text is mostly the distance of `floor_server.py` (raw
ORT's work inline in a bare grpc.aio handler), so this splits the floor's calls. The Go client
(`make clients`) notes the Unix ns at which each call starts and ends, the floor server those at
which its handler starts and ends (`--record`), and each call falls into:
- client → handler: the request from the client's call to the handler's first line (the client's
  send, loopback TCP, grpc core, the event loop's wake-up, deserialization);
- handler: tokenize, the session run, pooling and building the response;
- handler → client: from the handler's return until the client has the response.

Arms, each in `--processes` processes, taking turns on bench.py's single-text texts
(`bench.interleaved`: closed loop, then open loop):
- the floor server;
- the floor server with `--fixed`: the same calls, request and response, but no session run
  (pooling a fixed hidden state), so its split is the gRPC round trip with a warm machine;
- raw ORT in processes of its own (`raw_process.py`), the reference, timed around its work only.
`--also` adds a floor arm with those floor_server.py options (e.g. "--ort-config
session.force_spinning_stop=1"); leading NAME=VALUE words set environment variables for it, as on
a shell's command line (e.g. "GRPC_EXPERIMENTS=-event_engine_listener --fixed"). Prints the p50
of each part per arm and writes out/call_split.json (the handlers' own records go to
out/call_split/).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench import (GO_LATENCY, OUT, PACED_TEXTS, FloorProcess, GoClient, RawProcess, export_models,
                   interleaved, leading_assignments, one_line)
from corpus import load_texts

RAW = "raw ORT in its own process"
ARMS = {"floor_server.py": ((), {}), "floor_server.py --fixed (no run)": (("--fixed",), {})}


def floor_arm(spec: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """An --also value: its floor_server.py options, and the NAME=VALUE words before them as the
    arm's environment."""
    words, env = leading_assignments(spec)
    return tuple(words), env


class WallClient(GoClient):
    """The Go client's `wall` command: each call's duration, and its start and end in Unix ns."""

    def __init__(self, address: str):
        super().__init__(address)
        self.spans: list[tuple[int, int]] = []

    def embed(self, text: str) -> float:
        answer = self._ask("wall " + one_line(text)).split()
        if len(answer) != 3 or not all(a.isdigit() for a in answer):
            raise RuntimeError(f"{self.name}: {' '.join(answer) or 'exited'}")
        took, start, end = (int(a) for a in answer)
        self.spans.append((start, end))
        return took / 1e6


def split(client: list[tuple[int, int]], server: list[tuple[int, int]], timed: list[int]) -> dict[str, list[float]]:
    """Per timed call (µs): total, client → handler, handler, handler → client. Both lists hold
    every call in the order made (warm-up included); `timed` picks the calls interleaved timed."""
    if len(client) != len(server):
        raise RuntimeError(f"{len(client)} calls made but {len(server)} recorded by the server")
    c, s = np.array(client, dtype=np.int64)[timed], np.array(server, dtype=np.int64)[timed]
    parts = {"total": c[:, 1] - c[:, 0], "client → handler": s[:, 0] - c[:, 0],
             "handler": s[:, 1] - s[:, 0], "handler → client": c[:, 1] - s[:, 1]}
    return {k: (v / 1e3).tolist() for k, v in parts.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2, help="processes per arm")
    ap.add_argument("--texts", type=int, default=200, help="closed-loop texts (the open loop takes up to 240)")
    ap.add_argument("--no-open", action="store_true", help="closed loop only")
    ap.add_argument("--port", type=int, default=50760)
    ap.add_argument("--also", action="append", default=[], metavar="FLOOR ARGS",
                    help="another floor arm, with these floor_server.py options (after any NAME=VALUE "
                         "environment variables)")
    args = ap.parse_args()
    floors = {**ARMS, **{f"floor_server.py {a}": floor_arm(a) for a in args.also}}
    if not GO_LATENCY.is_file():
        raise SystemExit(f"{GO_LATENCY} is missing: run `make clients`")
    texts = load_texts()[-args.texts:]  # bench.py's single-text texts
    model_dir = export_models(OUT / "models", ("fp32",))["fp32"]
    records_dir = OUT / "call_split"  # each floor process's handler times, written when it stops
    records_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, Path] = {}
    servers: dict[str, FloorProcess] = {}
    clients: dict[str, WallClient] = {}
    raws: list[RawProcess] = []
    arms: list[tuple[str, object, bool]] = []
    loops = [("closed", texts, False)] + ([] if args.no_open else [("open", texts[:PACED_TEXTS], True)])
    results: dict[str, dict] = {}
    try:
        port = args.port
        for k in range(args.processes):
            for name, (extra, env) in floors.items():
                key = f"{name}#{k}"
                records[key] = records_dir / f"{port}.jsonl"
                servers[key] = FloorProcess(model_dir, port, (*extra, "--record", str(records[key])), env)
                clients[key] = WallClient(servers[key].address)
                arms.append((key, clients[key].embed, True))
                port += 1
            raws.append(RawProcess(model_dir))
            arms.append((f"{RAW}#{k}", raws[-1].one, True))
        for text in texts[:10]:  # warm up
            for _, fn, _ in arms:
                fn(text)
        timed_by_loop = {}
        for loop, loop_texts, paced in loops:
            timed: dict[str, list[int]] = {key: [] for key in clients}  # indices into the client's spans

            def on_timed(key: str, timed: dict[str, list[int]] = timed) -> None:
                if key in clients:
                    timed[key].append(len(clients[key].spans) - 1)

            lat = interleaved(arms, loop_texts, paced, on_timed=on_timed)
            results[loop] = {key: {"total": [ms * 1e3 for ms in v]} for key, v in lat.items()}
            timed_by_loop[loop] = timed
    finally:
        for c in [*clients.values(), *raws]:
            c.close()
        for s in servers.values():
            s.stop()  # SIGTERM: the server writes its record
    for key, record in records.items():
        recorded = [tuple(json.loads(line)) for line in record.read_text().splitlines()]
        for loop, _, _ in loops:
            results[loop][key] = split(clients[key].spans, recorded, timed_by_loop[loop][key])
    report(results)
    out = OUT / "call_split.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"samples: {out}")
    return 0


def report(results: dict[str, dict]) -> None:
    for loop, by_key in results.items():
        pooled: dict[str, dict[str, list[float]]] = {}
        for key, parts in by_key.items():
            arm = key.rsplit("#", 1)[0]
            for part, v in parts.items():
                pooled.setdefault(arm, {}).setdefault(part, []).extend(v)
        ref = float(np.median(pooled.pop(RAW)["total"]))
        print(f"\n{loop} loop, p50 (µs); {RAW}: {ref:.0f} µs")
        cols = ["total", "client → handler", "handler", "handler → client"]
        print(f"| arm | {' | '.join(cols)} | outside the handler | total − raw ORT |")
        print("|---|" + "---|" * (len(cols) + 2))
        for arm, parts in pooled.items():
            p = {c: float(np.median(parts[c])) for c in cols}
            outside = float(np.median(np.subtract(parts["total"], parts["handler"])))
            vs_raw = "" if "--fixed" in arm else f"{p['total'] - ref:+.0f}"
            print(f"| {arm} | {' | '.join(f'{p[c]:.0f}' for c in cols)} | {outside:.0f} | {vs_raw} |")


if __name__ == "__main__":
    raise SystemExit(main())
