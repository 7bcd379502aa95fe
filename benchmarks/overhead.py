"""What ember's own Python adds to one text's inference, without the gRPC stack around it.

    python benchmarks/overhead.py                  # this tree's server code
    python benchmarks/overhead.py --rev b669cbe    # an earlier commit's, for a before/after
    python benchmarks/overhead.py --split          # and where ember's time around the run goes

Over gRPC a single text's latency is raw ORT + the Python gRPC stack (`floor_server.py` measures
that) + ember's own work, and on a noisy 2-core machine the first two swing by more than the
third. Here ember runs in this process: its `Embedder.Embed` handler is awaited directly (the
same code a gRPC call runs: validation, tokenization, the scheduler's path for a lone call,
pooling, the response message, metrics), in alternating blocks with raw ONNX Runtime's single
text (`bench.RawOrt.one`) on the same texts. Both sessions' `run` calls are timed, so each call
splits into the ONNX Runtime run and everything around it; the table's last line is ember's
"around" minus raw ORT's (tokenization and pooling are in both). Calls are 2 ms apart, as a
closed-loop client's are over gRPC. Prints a table and writes out/overhead.json.

With --split, the functions a lone text's Embed call goes through (validation, the registry,
tokenization, the scheduler's inline path, pinning, the engine's run and pooling, the response)
are also timed one by one in ember's calls, and a second table gives each one's p50 per call.
Timing them costs ~0.3 µs per function per call, which the first table's ember rows then include.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np
from bench import MODEL, OUT, RawOrt, _req, cpu_description, export_models
from corpus import load_texts

GAP_S = 0.002


class Stamps:
    """Each named function's duration per call (ns), by wrapping it where the handler looks it up:
    a module's global or an object's attribute. Only counts while `on`."""

    def __init__(self):
        self.ns: dict[str, list[int]] = {}
        self.on = False
        self._undo: list[tuple[object, str, bool, object]] = []  # (owner, name, its own attribute?, before)

    def wrap(self, owner, name: str, label: str) -> None:
        fn, ns = getattr(owner, name), self.ns.setdefault(label, [])
        self._undo.append((owner, name, name in vars(owner), fn))

        def timed(*a, **k):
            if not self.on:
                return fn(*a, **k)
            t0 = time.perf_counter_ns()
            try:
                return fn(*a, **k)
            finally:
                ns.append(time.perf_counter_ns() - t0)

        setattr(owner, name, timed)

    def remove(self) -> None:
        """Put every wrapped function back as it was."""
        for owner, name, own, before in reversed(self._undo):
            if own:
                setattr(owner, name, before)
            else:  # a method looked up on the class: drop the instance's shadow
                delattr(owner, name)
        self._undo.clear()

    def install(self, server, model) -> None:
        """The functions of a lone text's Embed call, in the order it calls them (nested ones
        inside their callers: run_inline > _execute > engine.infer > _run, _post)."""
        from ember import scheduler, servicers

        for name in ("parsed", "embed_params", "resolve_prompt", "check_dimensions"):
            self.wrap(servicers, name, name)
        self.wrap(server.registry, "get", "registry.get")
        self.wrap(model.tokenizer, "encode", "tokenizer.encode")
        self.wrap(model.scheduler, "run_inline", "scheduler.run_inline")
        for name in ("_new_job", "_pin_here", "_unpin_here"):
            self.wrap(scheduler, name, f"scheduler.{name}")
        self.wrap(model.scheduler, "_execute", "scheduler._execute")
        self.wrap(model.engine, "infer", "engine.infer")
        self.wrap(model.engine, "_run", "engine._run (the ORT run)")
        self.wrap(model.engine, "_post", "engine._post (pooling)")
        for name in ("finish_embeddings", "_timing"):
            self.wrap(servicers, name, name)
        self.wrap(servicers.wire, "embed_response", "wire.embed_response")
        self.wrap(server.core, "_observe", "core._observe (metrics)")


class TimedRuns:
    """Times a session's run calls (plain and IO-bound) into `self.ns`, by shadowing the bound
    methods on the session instance (a Stamps that is always on)."""

    def __init__(self, session):
        stamps = Stamps()
        stamps.on = True
        for name in ("run", "run_with_iobinding"):
            stamps.wrap(session, name, "run")
        self.ns: list[int] = stamps.ns["run"]


class Context:
    """What the handler asks of a grpc.aio context on a successful call."""

    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()


async def measure(texts: list[str], rounds: int, block: int, stamps: Stamps | None = None) -> dict:
    from ember.app import create_server
    from ember.servicers import EmbedderServicer
    from ember.settings import Settings

    models = export_models(OUT / "models", ("fp32",))
    server, _ = await create_server(Settings(host="127.0.0.1", port=0, models_dir=str(models["fp32"].parent),
                                             metrics_port=0, log_level="warning"))
    try:
        await server.loaded.wait()
        await asyncio.to_thread(server.registry.models[MODEL].lanes_ready.wait, 60)
        handler, ctx = EmbedderServicer(server.core), Context()
        engine = server.registry.models[MODEL].engine
        if stamps is not None:
            stamps.install(server, server.registry.models[MODEL])
        raw = RawOrt(models["fp32"])
        runs = {"ember": TimedRuns(engine.session), "raw": TimedRuns(raw.session)}

        async def ember_one(t):
            await handler.Embed(_req([t]), ctx)

        async def raw_one(t):
            raw.one(t)

        calls = {"ember": ember_one, "raw": raw_one}
        for t in texts[:20]:  # warm both
            for call in calls.values():
                await call(t)
        out = {k: {"total_ns": [], "around_ns": []} for k in calls}
        for r in range(rounds):
            chunk = texts[(r * block) % len(texts):][:block]
            for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                for t in chunk:
                    # A gRPC round trip's worth of pause, as between a closed-loop client's calls:
                    # so the server's default inline path (which wants the model idle for
                    # --inline-idle-us) is taken as it is over gRPC, and caches cool as they do.
                    await asyncio.sleep(GAP_S)
                    runs[name].ns.clear()
                    if stamps is not None:
                        stamps.on = name == "ember"
                    t0 = time.perf_counter_ns()
                    await calls[name](t)
                    total = time.perf_counter_ns() - t0
                    if stamps is not None:
                        stamps.on = False
                    out[name]["total_ns"].append(total)
                    out[name]["around_ns"].append(total - sum(runs[name].ns))
        return out
    finally:
        await server.drain(1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="", help="measure git revision REV's server code (see ab.py)")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--split", action="store_true", help="also time each function of ember's call")
    args = ap.parse_args()
    if args.rev:
        from ab import revision_env

        argv = [sys.executable, __file__, "--rounds", str(args.rounds), "--block", str(args.block),
                *(["--split"] if args.split else [])]
        return subprocess.call(argv, env={**revision_env(args.rev), "EMBER_OVERHEAD_REV": args.rev})
    texts = load_texts()[-400:]  # bench.py's single-text texts
    stamps = Stamps() if args.split else None
    res = asyncio.run(measure(texts, args.rounds, args.block, stamps))
    p50 = {k: {m: float(np.median(v[m])) / 1e3 for m in v} for k, v in res.items()}
    rev = os.environ.get("EMBER_OVERHEAD_REV", "this tree")
    rows = [("raw ORT single text: whole call / around the ORT run, p50 (µs)",
             f"{p50['raw']['total_ns']:.0f} / {p50['raw']['around_ns']:.0f}"),
            (f"ember Embed handler in-process ({rev}): whole call / around the ORT run, p50 (µs)",
             f"{p50['ember']['total_ns']:.0f} / {p50['ember']['around_ns']:.0f}"),
            ("ember's own work per text (ember around − raw around, p50 of each) (µs)",
             f"{p50['ember']['around_ns'] - p50['raw']['around_ns']:.0f}")]
    print(f"Machine: {cpu_description()}; {args.rounds} alternating blocks of {args.block} texts\n")
    print("| measurement | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    split = {}
    if stamps is not None:
        calls = len(res["ember"]["total_ns"])
        print(f"\nember's call, function by function ({calls} calls; nested ones are inside their callers)\n")
        print("| function | calls | p50 per call (µs) |\n|---|---|---|")
        for label, ns in stamps.ns.items():
            split[label] = float(np.median(ns)) / 1e3 if ns else None
            print(f"| {label} | {len(ns)} | {split[label]:.1f} |" if ns else f"| {label} | 0 | |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "overhead.json").write_text(json.dumps({"rev": rev, "p50_us": p50, "split_p50_us": split,
                                                   "samples_ns": res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
