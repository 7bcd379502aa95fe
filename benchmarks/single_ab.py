"""Single-text latency of server option sets side by side, each in several processes.

    python benchmarks/single_ab.py ""                        # ember's defaults vs the references
    python benchmarks/single_ab.py -- "" "--no-metrics"      # two option sets (after `--`, so that
                                                             # a one-word set is not read as an option)
    python benchmarks/single_ab.py --processes 3 "@067f43e" ""  # an earlier commit's server (see ab.py)
    python benchmarks/single_ab.py -- "" "GRPC_EXPERIMENTS=-x --no-metrics"  # with environment variables

On this 2-core VM one process's ORT speed differs from another's by a few tenths of a ms for as
long as it lives, and raw ORT in bench.py's own process runs slower than in a process of its own,
so bench.py's single-text rows move by more than the differences this is for. Here every arm runs
in `--processes` processes (default 2), each timed with the Go client (`make clients`): every option
set as `ember serve`, `floor_server.py` (raw ORT's work in a bare grpc.aio handler) and raw ORT in
processes of its own (`raw_process.py`, the reference), also with its threads pinned as ember's
`--pin-threads` pins its own (`raw_process.py --pin`, a second reference). The arms take turns on
the same texts as in bench.py (`bench.interleaved`: closed loop in blocks, then open loop). Prints,
per arm, the p50 pooled over its processes and each process's p50, against the pooled references,
and the CPU time its processes used per call (all threads, the idle stretches between calls
included: ONNX Runtime's threads spin on after a run unless told not to); writes
out/single_ab.json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ab import start
from bench import (GO_LATENCY, MODEL, OUT, PACED_TEXTS, FloorProcess, GoClient, PipeTimed, RawProcess,
                   export_models, interleaved, pin_plan)
from corpus import load_texts


RAW = "raw ORT in its own process"  # the reference
RAW_PINNED = "raw ORT pinned in its own process"  # the second: its threads pinned as --pin-threads pins ember's


def cpu_ns(pid: int) -> int:
    """CPU time a process's threads have used (ns), from Linux's per-thread schedstat."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="`ember serve` options, one quoted string per server")
    ap.add_argument("--processes", type=int, default=2, help="processes per arm")
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--port", type=int, default=50700)
    args = ap.parse_args()
    if not GO_LATENCY.is_file():
        raise SystemExit(f"{GO_LATENCY} is missing: run `make clients`")
    texts = load_texts()[-args.texts:]  # bench.py's single-text texts
    model_dir = export_models(OUT / "models", ("fp32",))["fp32"]
    pinnable = bool(pin_plan("on", os.cpu_count() or 1))  # a pinned reference needs the cores for it
    procs: list = []  # everything started, stopped at the end
    arms: list[tuple[str, object, bool]] = []
    pids: dict[str, int] = {}  # arm → the process whose CPU time its calls cost
    try:
        port = args.port
        for k in range(args.processes):
            for c in args.configs:
                srv = start(c, model_dir.parent, port)
                procs.append(srv)
                client = GoClient(srv.address)
                procs.append(client)
                arms.append((f"ember `{c or '(defaults)'}`#{k}", client.embed, True))
                pids[arms[-1][0]] = srv.proc.pid
                port += 1
            floor = FloorProcess(model_dir, port)
            client = GoClient(floor.address)
            procs += [floor, client]
            arms.append((f"floor_server.py#{k}", client.embed, True))
            pids[arms[-1][0]] = floor.proc.pid
            for name, pin in ((RAW, False), (RAW_PINNED, True))[:2 if pinnable else 1]:
                raw = RawProcess(model_dir, pin=pin)
                procs.append(raw)
                arms.append((f"{name}#{k}", raw.one, True))
                pids[arms[-1][0]] = raw.proc.pid
            port += 1
        for t in texts[:10]:
            for _, fn, _ in arms:
                fn(t)
        res, cpu = {}, {}
        for loop, paced, loop_texts in (("closed", False, texts), ("open", True, texts[:PACED_TEXTS])):
            before = {key: cpu_ns(pid) for key, pid in pids.items()}
            res[loop] = interleaved(arms, loop_texts, paced=paced)
            cpu[loop] = {key: (cpu_ns(pid) - before[key]) / 1e6 / len(loop_texts) for key, pid in pids.items()}
    finally:
        for p in procs:
            (p.close if isinstance(p, PipeTimed) else p.stop)()
    print(f"\n{MODEL} fp32, single text, Go client, {args.processes} processes per arm, p50 (ms)\n")
    print("| loop | arm | p50 pooled | p50 of each process | vs raw ORT (pooled) | vs raw ORT pinned | CPU per call |\n"
          "|---|---|---|---|---|---|---|")
    for loop, lat in res.items():
        pooled: dict[str, list[np.ndarray]] = {}
        for key, v in lat.items():
            pooled.setdefault(key.rsplit("#", 1)[0], []).append(np.asarray(v))
        refs = [float(np.median(np.concatenate(pooled[name]))) for name in (RAW, RAW_PINNED) if name in pooled]
        for arm, vs in pooled.items():
            p50 = float(np.median(np.concatenate(vs)))
            each = ", ".join(f"{np.median(v):.2f}" for v in vs)
            vs_refs = " | ".join("reference" if arm.startswith("raw ORT") else f"{p50 - ref:+.2f} ms" for ref in refs)
            vs_refs += " | —" * (2 - len(refs))  # no pinned reference on this machine
            use = np.mean([v for key, v in cpu[loop].items() if key.rsplit("#", 1)[0] == arm])
            print(f"| {loop} | {arm} | {p50:.2f} | {each} | {vs_refs} | {use:.2f} |")
    print("\nCPU per call: the arm's server (or raw ORT) process's CPU time, all its threads, over the "
          "loop (the idle stretches between its calls included), per call, in ms; the client's is not in it.")
    (OUT / "single_ab.json").write_text(json.dumps({"latency_ms": res, "cpu_ms_per_call": cpu}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
