"""The memory a CPU model's batches take, and whether ember keeps within a pod's memory limit.

    python benchmarks/memory.py arena [--models minilm,bert-base,DIR] [--shapes 32x512,64x256,128x128]
    sudo python benchmarks/memory.py burst [--limit-mb 2048] [--rev REV]
    python benchmarks/memory.py sessions [--models minilm,minilm-int8,bert-base] [--sessions 3]

arena: ONNX Runtime's CPU arena keeps, after a run, the working memory the run needed: for a
batch of 16,384 tokens, several times a small model's weights. Each (model, B×T) runs in a fresh
process: the model's main session as ember's registry builds and warms it, then one batch of B
rows of T tokens. The RSS that batch added is printed beside ember's estimate for it
(`registry.batch_bytes`, the figure its memory plan uses). minilm is the embedded default model;
bert-base and xlmr-large are random-weight models of those shapes (torch builds them, as in
gpu_bench.py). Writes out/memory-arena.json (--out: elsewhere).

burst: `ember serve` on the embedded default model inside a memory cgroup limited to --limit-mb
(Linux, as root: cgroup v1 or v2), as in a pod with that memory limit. Once it has decided on its
lanes: one request that fills a batch budget with texts of max_tokens, then rounds of 4 such
requests at once. Prints the server's RSS after each, the cgroup's peak, and whether the server
was OOM-killed. --rev REV runs a git revision's server code instead of this tree's (see ab.py),
--serve-args more `ember serve` options. Writes out/memory-burst.json (--out: elsewhere).

sessions: what each ONNX Runtime session of a model holds, with its weights in the graph file
(`inside`, as `ember export` wrote them before) and beside it (`beside`: `<graph>_data`, as it
writes them now, which ORT maps from the file). Each (model, layout) in a fresh process: the
anonymous memory (RssAnon: not the mapped file) each of --sessions engines adds and the seconds
each takes to create, beside the registry's figure (`registry.session_bytes`). Then, in one
process, both layouts' sessions take turns (blocks of runs, each after a pause) on a single text
of 16 tokens and a batch of 32 × 64: the runs' medians. xlmr-large is over protobuf's 2 GB, so
beside only (and no run times). Writes out/memory-sessions.json (--out: elsewhere).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from bench import OUT, cpu_description, export_models, rss_mb

from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc

MB = 1 << 20


# ---- arena ----------------------------------------------------------------------------------
def model_dir(name: str) -> Path:
    if Path(name, "ember.json").is_file():  # an exported model directory (e.g. real_size.py --work's)
        return Path(name)
    if name == "minilm":
        return export_models(OUT / "models", ("fp32",))["fp32"]
    from gpu_bench import build_random, export

    root = OUT / "models-random"
    root.mkdir(parents=True, exist_ok=True)
    return export(build_random(name, root), root / name, "fp32")


def one_batch(path: Path, rows: int, length: int) -> dict:
    """In this (fresh) process: the RSS one batch adds to a warmed main session, and the estimate."""
    import numpy as np

    from ember.registry import Registry, batch_bytes
    from ember.settings import Settings

    reg = Registry(Settings(models_dir=str(path.parent), metrics=False))
    model = reg.load(path, register=False)
    reg._warm(model, model.engine)
    before = rss_mb(os.getpid())
    ids = np.full((rows, length), 5, dtype=np.int64)
    t0 = time.perf_counter()
    model.engine.infer(ids, np.ones_like(ids), np.zeros_like(ids) if model.engine.needs_type_ids else None)
    run_s = time.perf_counter() - t0
    at_length = dataclasses.replace(model.manifest, max_tokens=length)
    added = int((rss_mb(os.getpid()) - before) * MB)
    return {"added": added, "estimate": batch_bytes(path, at_length, rows * length), "run_s": run_s}


def arena(args) -> int:
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    print(f"Machine: {cpu_description()}\n")
    print("| model | batch (rows × tokens) | RSS the batch added (MB) | ember's estimate (MB) | estimate / added |")
    print("|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        path = model_dir(name)
        for b, t in shapes:
            out = subprocess.run([sys.executable, __file__, "_one", str(path), str(b), str(t)], check=True,
                                 capture_output=True, text=True).stdout
            r = {"model": name, "rows": b, "length": t, **json.loads(out.strip().splitlines()[-1])}
            rows.append(r)
            print(f"| {name} | {b} × {t} | {r['added'] / MB:.0f} | {r['estimate'] / MB:.0f} | "
                  f"{r['estimate'] / max(r['added'], 1):.2f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


# ---- sessions -------------------------------------------------------------------------------
def layouts(name: str) -> dict[str, Path]:
    """The model's directory with its weights in the graph file and beside it (copies under OUT)."""
    import shutil

    from ember.export import ExportError, _weights_beside, _weights_in_graph
    from ember.manifest import checksum_files, read_manifest

    if name == "minilm-int8":
        src = export_models(OUT / "models", ("int8",))["int8"]
    else:
        src = model_dir(name)
    graph = read_manifest(src, verify=False).onnx_file
    out = {}
    for layout, rewrite in (("inside", _weights_in_graph), ("beside", _weights_beside)):  # as `ember export`
        d = OUT / "layouts" / name / layout
        if not (d / "ember.json").is_file():
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(src, d, ignore=shutil.ignore_patterns("ember.json"))
            try:
                rewrite(d / graph)
            except ExportError:  # over protobuf's 2 GB limit: its weights can only be beside it
                shutil.rmtree(d)
                continue
            m = dataclasses.replace(read_manifest(src, verify=False), files=checksum_files(d))
            (d / "ember.json").write_text(m.to_json())  # last: the copy is complete
        out[layout] = d
    return out


def session_memory(path: Path, sessions: int) -> dict:
    """In this (fresh) process: the RssAnon and seconds each of `sessions` CPU engines adds."""
    from ember.engine import Engine
    from ember.manifest import read_manifest
    from ember.registry import session_bytes, weights_bytes

    def anon() -> int:
        return int(rss_mb(os.getpid(), "RssAnon") * MB)

    m = read_manifest(path, verify=False)
    keep, added, seconds = [], [], []
    for _ in range(sessions):
        before, t0 = anon(), time.perf_counter()
        keep.append(Engine(path, m, ("cpu",), os.cpu_count() or 1, spinning=True))
        seconds.append(time.perf_counter() - t0)
        added.append(anon() - before)
    return {"added": added, "seconds": seconds, "weights": weights_bytes(path, m), "plan": session_bytes(path, m)}


def session_speed(paths: dict[str, Path], rounds: int = 12) -> dict:
    """Both layouts' sessions taking turns: each shape's run medians (ms) per layout."""
    import numpy as np
    import onnxruntime as ort

    from ember.manifest import read_manifest

    sessions = {}
    for layout, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        sessions[layout] = ort.InferenceSession(str(path / read_manifest(path, verify=False).onnx_file), opts,
                                                providers=["CPUExecutionProvider"])
    names = {i.name for i in next(iter(sessions.values())).get_inputs()}
    rng = np.random.default_rng(0)
    out = {}
    for rows, length, block in ((1, 16, 10), (32, 64, 3)):
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            ids = rng.integers(1000, 20000, (rows, length)).astype(np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            for k, s in sessions.items():
                time.sleep(0.15)  # the other session's threads stop spinning
                s.run(None, feed)
                for _ in range(block):
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    times[k].append(time.perf_counter() - t0)
        out[f"{rows}x{length}"] = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return out


def sessions(args) -> int:
    print(f"Machine: {cpu_description()}\n")
    print("| model | weights (MB) | layout | RssAnon each session added (MB) | registry's figure (MB) | "
          "seconds to create each |")
    print("|---|---|---|---|---|---|")
    rows, speed = [], {}
    for name in args.models.split(","):
        paths = layouts(name)
        for layout, path in paths.items():
            out = subprocess.run([sys.executable, __file__, "_sessions", str(path), str(args.sessions)], check=True,
                                 capture_output=True, text=True).stdout
            r = {"model": name, "layout": layout, **json.loads(out.strip().splitlines()[-1])}
            rows.append(r)
            print(f"| {name} | {r['weights'] / MB:.0f} | {layout} | {', '.join(f'{a / MB:.0f}' for a in r['added'])}"
                  f" | {r['plan'] / MB:.0f} | {', '.join(f'{t:.2f}' for t in r['seconds'])} |", flush=True)
        if len(paths) == 2:
            speed[name] = session_speed(paths)
    print("\n| model | run | inside (ms) | beside (ms) | beside / inside |\n|---|---|---|---|---|")
    for name, shapes in speed.items():
        for shape, t in shapes.items():
            print(f"| {name} | {shape} | {t['inside']:.2f} | {t['beside']:.2f} | {t['beside'] / t['inside']:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"sessions": rows, "speed": speed}, indent=1))
    return 0


# ---- burst ----------------------------------------------------------------------------------
class MemoryCgroup:
    """A memory cgroup of its own (v1 or v2), limited to `limit` bytes; removed by close()."""

    def __init__(self, limit: int):
        v1 = Path("/sys/fs/cgroup/memory")
        self.v1 = v1.is_dir()
        base = v1 if self.v1 else Path("/sys/fs/cgroup")
        self.dir = base / f"ember-burst-{os.getpid()}"
        try:
            self.dir.mkdir()
            (self.dir / ("memory.limit_in_bytes" if self.v1 else "memory.max")).write_text(str(limit))
        except OSError as e:
            raise SystemExit(f"cannot make a memory cgroup under {base} ({e}): burst needs root on Linux") from e

    def peak(self) -> int:
        f = self.dir / ("memory.max_usage_in_bytes" if self.v1 else "memory.peak")
        return int(f.read_text()) if f.is_file() else 0

    def oom_kills(self) -> int:
        text = (self.dir / ("memory.oom_control" if self.v1 else "memory.events")).read_text()
        m = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(m.group(1)) if m else 0

    def close(self) -> None:
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def burst(args) -> int:
    env = dict(os.environ)
    if args.rev:
        from ab import revision_env

        env = revision_env(args.rev)
    cg = MemoryCgroup(args.limit_mb * MB)
    log: list[str] = []
    argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cg.dir), sys.executable, "-m", "ember",
            "serve", "--host", "127.0.0.1", "--port", str(args.port), "--no-metrics", "--log-level", "info",
            *shlex.split(args.serve_args)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    result = {"rev": args.rev or "this tree", "serve_args": args.serve_args, "limit_mb": args.limit_mb, "steps": []}
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{args.port}",
                                        options=[("grpc.max_receive_message_length", 256 * MB)])
        stub, models = pb_grpc.EmbedderStub(channel), pb_grpc.ModelsStub(channel)
        for _ in range(600):
            try:
                info = models.ListModels(pb.ListModelsRequest(), timeout=1).models[0]
                if info.ready:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        t0 = time.monotonic()  # the lanes are decided (built, or left out) in the background
        while not any("lane session" in line or "no lanes" in line for line in log) and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        time.sleep(1)
        plan = [line.split(": ", 1)[-1].strip() for line in log if "memory planned" in line or "lane" in line
                or "lowered" in line]
        texts = [f"text {i} " + "word " * (2 * info.max_tokens) for i in range(args.budget // info.max_tokens)]

        def step(what: str, error: str = "") -> None:
            alive = proc.poll() is None
            mb = rss_mb(proc.pid) if alive else None
            result["steps"].append({"after": what, "rss_mb": mb, "alive": alive, "error": error})
            state = f"{mb:.0f} MB" if alive else f"gone (exit {proc.returncode})"
            print(f"| {what} | {state} | {error or 'answered'} |", flush=True)

        print(f"Machine: {cpu_description()}; server: {result['rev']} {args.serve_args}; memory limit "
              f"{args.limit_mb} MB; {len(texts)} texts of {info.max_tokens} tokens per request\n")
        print("\n".join(f"- {p}" for p in plan) + "\n")
        print("| after | server RSS | requests |\n|---|---|---|")
        step("SERVING, lanes decided")

        def call(errors: list) -> None:
            try:
                stub.Embed(pb.EmbedRequest(inputs=texts), timeout=600)
            except grpc.RpcError as e:
                errors.append(e.code().name)

        errors: list[str] = []
        call(errors)
        step("one request alone", ",".join(errors))
        for r in range(args.rounds):
            if proc.poll() is not None:
                break
            errors = []
            threads = [threading.Thread(target=call, args=(errors,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            step(f"round {r + 1} of 4 requests at once", ",".join(sorted(set(errors))))
        result.update(plan=plan, peak_mb=cg.peak() / MB, oom_kills=cg.oom_kills(), survived=proc.poll() is None)
        print(f"\ncgroup peak {result['peak_mb']:.0f} MB of {args.limit_mb}; OOM kills {result['oom_kills']}; "
              f"server {'survived' if result['survived'] else 'was killed'}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        cg.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "_one":
        print(json.dumps(one_batch(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "_sessions":
        print(json.dumps(session_memory(Path(sys.argv[2]), int(sys.argv[3]))))
        return 0
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("arena", help="what one batch adds to a session's memory, against ember's estimate")
    a.add_argument("--models", default="minilm,bert-base", help="minilm, bert-base, xlmr-large, or exported model "
                                                               "directories")
    a.add_argument("--shapes", default="32x512,64x256,128x128", help="batches, ROWSxTOKENS, comma-separated")
    a.add_argument("--out", default=str(OUT / "memory-arena.json"), help="where to write the results (JSON)")
    b = sub.add_parser("burst", help="ember serve in a memory-limited cgroup under bursts of long texts")
    b.add_argument("--limit-mb", type=int, default=2048)
    b.add_argument("--rev", default="", help="a git revision's server code (see ab.py)")
    b.add_argument("--budget", type=int, default=16384, help="tokens per request (the default max_batch_tokens)")
    b.add_argument("--serve-args", default="", help="more `ember serve` options, e.g. \"--max-batch-tokens 8192\"")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--port", type=int, default=50791)
    b.add_argument("--out", default=str(OUT / "memory-burst.json"), help="where to write the results (JSON)")
    c = sub.add_parser("sessions", help="what each session of a model holds, its weights in the graph or beside it")
    c.add_argument("--models", default="minilm,minilm-int8,bert-base", help="minilm, minilm-int8, bert-base, "
                   "xlmr-large")
    c.add_argument("--sessions", type=int, default=3)
    c.add_argument("--out", default=str(OUT / "memory-sessions.json"), help="where to write the results (JSON)")
    args = ap.parse_args()
    return {"arena": arena, "burst": burst, "sessions": sessions}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
