"""Model registry: finds model directories, verifies them, and owns each loaded model's parts.

A model is its directory under the models directory; its name is the directory's name. A model
that fails to load (missing manifest, checksum mismatch, broken graph) is refused with a clear
message and the others still load.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from .engine import ORT_PROVIDER, Engine, accelerator_options
from .errors import InvalidArgument, ModelLoadError, NotFound, Unavailable
from .ext import BufferPool, cuda_error
from .fallback import CircuitBreaker, FallbackEngine
from .families import FUSED_DECODERS
from .manifest import Manifest, read_manifest
from .scheduler import ModelScheduler
from .settings import KNOWN_PROVIDERS, ModelConfig, Settings, model_config
from .tokenization import ModelTokenizer

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

log = logging.getLogger(__name__)


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere). A
    model's load frees more than it keeps (ONNX Runtime's graph optimization, the tokenizer's
    character table: ~10 MB of Python objects built and dropped), and glibc keeps freed pages
    mapped, so without this a server's RSS stays that much above what it uses."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")

WARMUP_LENGTHS = (8, 32, 128)
# A CPU model plans its memory within this share of what is available when it loads (the rest is
# for Python, gRPC, tokenization and whatever else the process holds): its sessions' weights
# (session_bytes) and the working memory of its batches. An ONNX Runtime arena keeps what its
# runs needed: after batches of one shape, runs + 1 batches' worth for `runs` runs that may be in
# progress at once (arena_bytes). A batch's working memory per padded token, for rows of `length`
# tokens, is 4 bytes × (ACT_HIDDEN × hidden + ACT_ATTENTION × heads × length): fitted, rounded up,
# to what one batch of MiniLM, BERT-base and XLM-R-large shapes added to a fresh session
# (benchmarks/memory.py; numbers in benchmarks/RESULTS.md).
MEMORY_SHARE = 0.8
# A session's memory, as a multiple of the weights' bytes: ORT copies weights held in the graph
# file (and repacks the matrices' for its kernels), and maps weights held beside it
# (`<graph>_data`, as `ember export` writes them) from the file, shared by all sessions, holding
# only its repacked copies. Rounded up from benchmarks/memory.py sessions: 1.12-1.25 and
# 0.50-0.81 for MiniLM (fp32, int8), BERT-base and XLM-R-large shapes.
WEIGHT_FACTOR = 1.25
WEIGHT_FACTOR_BESIDE = 0.85
ACT_HIDDEN, ACT_ATTENTION = 13, 2.25
# The Qwen3 graphs (plain attention) hold more per head and length² than the encoders: their causal
# mask and its padded copies. 3.25 is rounded up from one 8,192-token input of Qwen3-0.6B's shape
# (13.2 GB); 4 × 2,048 needs less (benchmarks/memory.py arena on real_size.py's exports).
ACT_ATTENTION_DECODER = 3.25
_UNLIMITED = 1 << 60  # a cgroup v1 "no limit" is a number near 2**63


def memory_available() -> int | None:
    """Bytes this process may still allocate: the host's MemAvailable or, in a memory-limited
    cgroup (a container), the limit minus what the cgroup uses beyond reclaimable page cache,
    whichever is less. None where neither can be read (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        cgroup = _cgroup_memory_available()
    except (OSError, ValueError):
        cgroup = None
    if cgroup is not None:
        found.append(cgroup)
    return min(found) if found else None


def weights_file(path: Path, manifest: Manifest) -> Path:
    """Where a model's weights are when they are beside its graph (`ember export` writes them there)."""
    return path / (manifest.onnx_file + "_data")


def weights_bytes(path: Path, manifest: Manifest) -> int:
    """Bytes of a model's graph and its external weights (what each ONNX Runtime session loads)."""
    return sum(f.stat().st_size for f in (path / manifest.onnx_file, weights_file(path, manifest)) if f.is_file())


def session_bytes(path: Path, manifest: Manifest) -> int:
    """What one more ONNX Runtime session of the model holds for its weights (WEIGHT_FACTOR*)."""
    beside = weights_file(path, manifest).is_file()
    return int(weights_bytes(path, manifest) * (WEIGHT_FACTOR_BESIDE if beside else WEIGHT_FACTOR))


def token_bytes(path: Path, manifest: Manifest, length: int = 0) -> int:
    """Working memory of a CPU batch per padded token, its rows `length` tokens long (default: the
    model's max_tokens, the most a token can cost: attention grows with the row's length). Hidden
    size and heads from the model's config.json; where it has none, the embedding size and one
    head per 64 of it."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    hidden = int(cfg.get("hidden_size") or manifest.dimensions)
    heads = int(cfg.get("num_attention_heads") or max(1, hidden // 64))
    # A SPLADE graph holds [tokens, vocabulary] masked-LM logits before it pools them: counted as the
    # logits and two element-wise copies (masked, then relu/log1p), an estimate, not fitted.
    vocab = 3 * int(cfg.get("vocab_size") or manifest.dimensions) if manifest.sparse_kind == "vocab" else 0
    if manifest.family in FUSED_DECODERS and manifest.optimize:
        # GroupQueryAttention: no length² tensor, but every layer's key and value heads (its
        # present_key/value outputs, which its CPU kernel reads) stay in the arena to the end of the
        # run: 2 × (1 + 5 %) per layer. 8,192-token batches of Qwen3-0.6B's shape took 0.95-0.97 of
        # this estimate whatever their rows' length (fp32, int8).
        kv = int(cfg.get("num_key_value_heads") or heads) * int(cfg.get("head_dim") or hidden // heads)
        return int(4 * (ACT_HIDDEN * hidden + 2.1 * kv * int(cfg.get("num_hidden_layers") or 1) + vocab))
    attention = ACT_ATTENTION_DECODER if manifest.family in FUSED_DECODERS else ACT_ATTENTION
    return int(4 * (ACT_HIDDEN * hidden + attention * heads * (length or manifest.max_tokens) + vocab))


def batch_bytes(path: Path, manifest: Manifest, budget: int) -> int:
    """Working memory of the largest CPU batch a budget of `budget` padded tokens lets through (a
    text longer than the budget runs alone, so at least one row of max_tokens)."""
    return max(budget, manifest.max_tokens) * token_bytes(path, manifest)


def arena_bytes(runs: int, batch: int) -> int:
    """What an arena keeps for `runs` runs at once of batches of `batch` bytes of working memory."""
    return (runs + 1) * batch


def fit_budget(path: Path, manifest: Manifest, session: int, free: int, budget: int) -> int:
    """The batch budget for a CPU model: `budget`, lowered (to a multiple of max_tokens, at least
    one row of them) where what the main session's arena keeps for its batches would not fit beside
    its weights (`session`: session_bytes) in MEMORY_SHARE of the `free` bytes, so that a burst of
    long texts cannot get the server OOM-killed."""
    per, row = token_bytes(path, manifest), manifest.max_tokens
    room = MEMORY_SHARE * free - session
    wanted = arena_bytes(1, max(budget, row) * per)  # batch_bytes(budget), config.json read once
    if wanted <= room:
        return budget
    fit = max(0, int(room // arena_bytes(1, per))) // row * row
    mb = 1 << 20
    if fit < row:
        log.warning("model %s: even texts of %d tokens one at a time need ~%d MB of working memory, more than the "
                    "~%d MB left beside its weights: long texts may exhaust the memory (lower its max_tokens, or "
                    "give the server more memory)", manifest.name, row, arena_bytes(1, row * per) // mb,
                    max(0, int(room)) // mb)
        return min(budget, row)
    log.warning("model %s: max_batch_tokens lowered from %d to %d: batches of %d tokens need ~%d MB of working "
                "memory and ~%d MB is left beside its weights (of %d MB available)", manifest.name, budget, fit,
                budget, wanted // mb, int(room) // mb, free // mb)
    return fit


def _cpu_only(engine) -> bool:
    """A plain CPU engine (no accelerator, no fallback pair): its batches run in host memory."""
    return isinstance(engine, Engine) and engine.providers == ["cpu"]


def _cgroup_memory_available(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> int | None:
    """limit − (usage − inactive file pages) of this process's memory cgroup (v2, else v1); None
    when it has no limit."""
    v2 = v1 = ""
    for line in proc.read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    # Inside a container its own cgroup is usually mounted as the root: try the path, then the root.
    candidates = [(root / v2.lstrip("/"), "memory.max", "memory.current", "inactive_file"),
                  (root, "memory.max", "memory.current", "inactive_file"),
                  (root / "memory" / v1.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes",
                   "total_inactive_file"),
                  (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")]
    for d, limit_file, usage_file, inactive_key in candidates:
        if not (d / limit_file).is_file():
            continue
        limit = (d / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= _UNLIMITED:
            return None
        used = int((d / usage_file).read_text())
        for line in (d / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                used -= int(value)
                break
        return max(0, int(limit) - used)
    return None


@dataclass(eq=False)
class LoadedModel:
    name: str
    path: Path
    manifest: Manifest
    tokenizer: ModelTokenizer
    engine: Engine
    scheduler: ModelScheduler
    load_seconds: float
    ready: bool = False
    users: int = 0  # calls holding this model now (counted by the servicers)
    lane_plan: tuple[int, int] = (0, 0)  # (workers, threads each) of the lanes to build once ready
    lanes_ready: threading.Event = field(default_factory=threading.Event)  # built (or none planned)


@dataclass(eq=False)
class Registry:
    settings: Settings
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    on_change: Callable[[], None] | None = None
    metrics: object | None = None  # ember.metrics.Metrics, handed to each model's scheduler
    models_dir: Path | None = None  # where model names are looked up (set when the server loads)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _lane_builders: list[threading.Thread] = field(default_factory=list)

    # ---- discovery and loading --------------------------------------------------------------
    def discover_named(self, models_dir: Path | None) -> dict[str, Path]:
        """Model name → directory: every subdirectory of models_dir, and the TOML file's
        [models.NAME] paths; only those named by --models when it is given."""
        wanted = set(self.settings.models)
        found: dict[str, Path] = {}
        if models_dir is not None:
            for p in sorted(models_dir.iterdir()):
                if p.is_dir() and not p.name.startswith("."):
                    found[p.name] = p
        for mc in self.settings.model_configs:
            if mc.path:
                found[mc.name] = Path(mc.path)
        named = wanted | {mc.name for mc in self.settings.model_configs}
        for name in sorted(named - set(found)):
            where = models_dir / name if models_dir is not None else "(no models_dir and no path)"
            self.errors[name] = f"model {name!r} is configured but {where} does not exist"
            log.error(self.errors[name])
        dirs = {name: p for name, p in sorted(found.items()) if not wanted or name in wanted}
        return dirs

    # ---- live changes (admin RPCs, SIGHUP) ---------------------------------------------------
    def path_of(self, name: str) -> Path:
        """The directory of model `name`: a [models.NAME] path, else <models_dir>/<name>, never outside it."""
        if not MODEL_NAME.fullmatch(name) or ".." in name:
            raise InvalidArgument("name", f"{name!r} is not a model name (letters, digits, '.', '_', '-'; no paths)")
        mc = model_config(self.settings, name)
        if mc.path:
            return Path(mc.path)
        if self.models_dir is None:
            raise NotFound(f"model {name!r}: no models directory and no [models.{name}] path")
        base = self.models_dir.resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base):  # a symlink pointing out of the models directory
            raise InvalidArgument("name", f"{name!r} resolves outside the models directory")
        if not (path / "ember.json").is_file():
            raise NotFound(f"no exported model {name!r} in {base}")
        return path

    def swap_in(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` (warm) under its name; returns the model it replaced."""
        with self._lock:
            old = self.models.get(model.name)
            self.models[model.name] = model
            self.errors.pop(model.name, None)
        self._changed()
        return old

    def remove(self, name: str) -> LoadedModel | None:
        with self._lock:
            old = self.models.pop(name, None)
        self._changed()
        return old

    def retire(self, old: LoadedModel, timeout: float) -> None:
        """Stop a model no longer served, once the calls still holding it are done (blocking)."""
        end = time.monotonic() + timeout
        while old.users > 0 and time.monotonic() < end:
            time.sleep(0.005)
        old.scheduler.stop()  # runs what is queued, then stops
        log.info("model %s (from %s) retired", old.name, old.path)

    def load(self, path: Path, name: str = "", register: bool = True) -> LoadedModel | None:
        """Load one model directory; on failure record and log the reason and return None.
        register=False: load it without serving it yet (a reload swaps it in once warm)."""
        name = name or path.name
        t0 = time.monotonic()
        mc = model_config(self.settings, name)
        try:
            manifest = self._apply(read_manifest(path), mc)
            if manifest.name != name:
                manifest = dataclasses.replace(manifest, name=name)
            weights, free = weights_bytes(path, manifest), memory_available()
            if free is not None and weights > free:  # ORT would take the whole server down with it
                raise ModelLoadError(f"its weights take {weights / 2**20:.1f} MB and only {free / 2**20:.1f} MB of "
                                     "memory is available (a container's limit included)")
            engine = self._engine(path, manifest, mc.providers or self.settings.providers,
                                  mc.max_batch_tokens or self.settings.max_batch_tokens)
            tokenizer = ModelTokenizer(path, manifest, with_type_ids=engine.needs_type_ids,
                                       fast=self.settings.fast_tokenizer)
        except ModelLoadError as e:
            self.errors[name] = str(e)
            log.error("model %s refused: %s", name, e)
            return None
        except Exception as e:  # a broken graph or tokenizer: refuse this model, keep the others
            self.errors[name] = f"{type(e).__name__}: {e}"
            log.error("model %s failed to load: %s: %s", name, type(e).__name__, e)
            return None
        s = self.settings
        plan = self._lane_plan(engine)
        budget = mc.max_batch_tokens or s.max_batch_tokens
        if free is not None and _cpu_only(engine):  # an accelerator's batches are in its own memory
            session = session_bytes(path, manifest)
            budget = fit_budget(path, manifest, session, free, budget)
            log.info("model %s: memory planned: ~%d MB for a session's weights, ~%d MB of working memory for "
                     "batches of %d tokens (of %d MB available)", name, session >> 20,
                     arena_bytes(1, batch_bytes(path, manifest, budget)) >> 20, budget, free >> 20)
        scheduler = ModelScheduler(
            engine, max_batch_tokens=budget, max_batch_size=s.max_batch_size,
            max_queue_items=s.max_queue_items, pad_left=manifest.padding_side == "left",
            pad_id=manifest.pad_token_id, bulk_max_batch_tokens=s.bulk_max_batch_tokens,
            batch_overhead_tokens=s.batch_overhead_tokens, max_wait_us=s.max_wait_us,
            workers=plan[0] or s.inference_workers or 1,
            inline_max_tokens=s.inline_max_tokens, bulk_solo_batch_tokens=s.bulk_solo_batch_tokens,
            realtime_recent_s=s.realtime_recent_ms / 1000, lanes_planned=bool(plan[0]),
            default_deadline_s=s.default_deadline_seconds,
        )
        scheduler.metrics = self.metrics
        model = LoadedModel(name, path, manifest, tokenizer, engine, scheduler, time.monotonic() - t0)
        model.lane_plan = plan
        if not plan[0]:
            model.lanes_ready.set()
        if register:
            self.swap_in(model)
        return model

    @staticmethod
    def _apply(m: Manifest, mc: ModelConfig) -> Manifest:
        """The TOML file's per-model changes, checked against what was exported."""
        where = f"models.{mc.name}"
        if mc.dtype and mc.dtype != m.dtype:
            raise ModelLoadError(f"{where}.dtype is {mc.dtype} but the exported model is {m.dtype}")
        if mc.max_tokens:
            if mc.max_tokens > m.max_tokens:
                raise ModelLoadError(f"{where}.max_tokens {mc.max_tokens} is more than the exported limit "
                                     f"{m.max_tokens} (re-export with --max-tokens)")
            m = dataclasses.replace(m, max_tokens=mc.max_tokens)
        if mc.prompts:
            m = dataclasses.replace(m, prompts={**m.prompts, **dict(mc.prompts)})
        return m

    def _new_engine(self, path: Path, manifest: Manifest, providers: tuple[str, ...], threads: int | None = None,
                    **options) -> Engine:
        """One ONNX Runtime session with the server's thread and spinning settings (threads: the
        intra-op threads, default --intra-op-threads), so that every session of a model gets them."""
        s = self.settings
        # The default list (tensorrt,cuda,cpu) means "what this onnxruntime build has": only a
        # provider asked for by name warns when it is missing.
        return Engine(path, manifest, providers, s.intra_op_threads if threads is None else threads, s.ort_spinning,
                      spin_after_run=s.ort_spin_after_run, shared_arena=s.shared_cpu_arena,
                      warn_missing=tuple(providers) != KNOWN_PROVIDERS, **options)

    def _engine(self, path: Path, manifest: Manifest, providers: tuple[str, ...], max_batch_tokens: int):
        """The model's engine; on an accelerator, wrapped with a CPU session and a circuit breaker.

        The CPU session is made first: the accelerator's options (TensorRT shape profiles) need the
        graph's input names, and the fallback needs the CPU session anyway."""
        s = self.settings
        accelerators = [p for p in providers if p != "cpu" and ORT_PROVIDER[p] in ort.get_available_providers()]
        if not accelerators:  # the CPU only (asked for, or all that this onnxruntime build has)
            return self._pooled(self._new_engine(path, manifest, providers, pin=s.pin_threads))
        cpu = self._new_engine(path, manifest, ("cpu",))
        options = accelerator_options(s, cpu.input_names, manifest.max_tokens, max_batch_tokens, manifest.name)
        engine = self._new_engine(path, manifest, providers, provider_options=options,
                                  run_timeout_s=s.gpu_timeout_ms / 1000)
        if engine.providers == ["cpu"]:  # the accelerator did not activate; this engine says why
            return self._pooled(engine)
        breaker = CircuitBreaker(s.breaker_threshold, s.breaker_recovery_seconds, on_change=self._changed)
        # One pool for both sessions, made after the accelerator's: ORT has loaded the CUDA runtime
        # by then, so the buffers are page-locked.
        self._pooled(engine)
        cpu.pool = engine.pool
        return FallbackEngine(engine, cpu, breaker)

    def _lane_plan(self, engine) -> tuple[int, int]:
        """(workers, threads each) of a CPU model's lanes (see Settings.inference_workers); (0, 0)
        when the workers share the main engine (an accelerator, one worker)."""
        s = self.settings
        threads = s.intra_op_threads or (os.cpu_count() or 1)
        workers = s.inference_workers or (2 if threads >= 2 else 1)
        if workers < 2 or not _cpu_only(engine):
            return 0, 0
        return workers, max(1, threads // workers)

    def build_lanes(self, model: LoadedModel) -> None:
        """Build and warm a ready model's lane sessions, then hand them to its workers. Runs after
        the model went SERVING (in the background: lanes add throughput, not availability); a model
        whose lanes fail keeps serving on its main session."""
        workers, per = model.lane_plan
        try:
            # A one-thread run needs no thread pool: then all workers can share one session.
            count = 1 if per == 1 else workers
            if not self._lanes_fit(model, count, workers, per):
                return
            sessions = [self._new_engine(model.path, model.manifest, ("cpu",), per) for _ in range(count)]
            for lane in sessions:
                lane.pool = model.engine.pool
                self._warm(model, lane)
            model.scheduler.add_lanes(sessions * workers if per == 1 else sessions)
            log.info("model %s: %d workers on %d lane session(s) of %d thread(s); a lone request on %d",
                     model.name, workers, len(sessions), per,
                     model.engine.session.get_session_options().intra_op_num_threads)
        except Exception as e:  # noqa: BLE001 - whatever failed, the model serves on its main session
            log.warning("model %s: its lanes could not be built (%s: %s); it serves on its main session only",
                        model.name, type(e).__name__, e)
        finally:
            release_free_heap()
            model.lanes_ready.set()

    def _lanes_fit(self, model: LoadedModel, sessions: int, workers: int, per: int) -> bool:
        """Whether `sessions` more sessions of the model and what the arenas keep for its workers'
        batches fit in MEMORY_SHARE of the memory available. Warm-up's small batches have not grown
        the main session's yet, so it is counted too: with one shared arena, the lanes' `workers`
        runs at once (the main session runs only when they do not); with an arena per session, the
        main session's one run and the lanes' runs (every worker on one shared one-thread session,
        else one each). With --inference-workers auto the lanes are not built when they do not
        fit, so a big model in a memory-limited pod is not killed for lanes it could do without; a
        number of workers asked for explicitly is built regardless, with a warning."""
        weights = sessions * session_bytes(model.path, model.manifest)
        batch = batch_bytes(model.path, model.manifest, model.scheduler.max_batch_tokens)
        if getattr(model.engine, "shared_arena", False):
            batches = arena_bytes(workers, batch)
        else:
            lanes = arena_bytes(workers, batch) if per == 1 else workers * arena_bytes(1, batch)
            batches = arena_bytes(1, batch) + lanes
        need, free = weights + batches, memory_available()
        if free is None or need <= free * MEMORY_SHARE:
            return True
        mb = 1 << 20
        what = (f"their {sessions} session(s) (~{weights // mb} MB) and the working memory of {workers} batches of "
                f"{model.scheduler.max_batch_tokens} tokens at once (~{batches // mb} MB)")
        if self.settings.inference_workers:
            log.warning("model %s: %s need more than %d%% of the %d MB available; building them as "
                        "--inference-workers %d asks", model.name, what, MEMORY_SHARE * 100, free // mb,
                        self.settings.inference_workers)
            return True
        log.warning("model %s: no lanes: %s would need more than %d%% of the %d MB available; it serves on its "
                    "main session only (--inference-workers 2 builds them anyway)", model.name, what,
                    MEMORY_SHARE * 100, free // mb)
        return False

    def _pooled(self, engine: Engine) -> Engine:
        mb = self.settings.buffer_pool_mb
        if mb and BufferPool is not None:
            engine.pool = BufferPool("auto", max_bytes=mb << 20)
            log.info("model %s: %s buffer pool of up to %d MB", engine.manifest.name,
                     "page-locked" if engine.pool.pinned else "aligned host", mb)
            if not engine.pool.pinned and engine.providers[0] != "cpu":
                log.warning("model %s: buffers are not page-locked (%s)", engine.manifest.name,
                            cuda_error() or "no CUDA runtime in the process")
        return engine

    def warm_up(self, model: LoadedModel) -> None:
        """Run one batch per length bucket so the first requests do not pay for graph set-up; the
        model is then ready, and its lanes (if any) are built in the background."""
        self._warm(model, model.engine)
        model.ready = True
        if not model.lanes_ready.is_set():
            t = threading.Thread(target=self.build_lanes, args=(model,), name=f"ember-lanes-{model.name}",
                                 daemon=True)
            self._lane_builders = [b for b in self._lane_builders if b.is_alive()] + [t]
            t.start()
        release_free_heap()
        log.info("model %s ready (%s, %s, providers %s, loaded in %.2fs)", model.name, model.manifest.task,
                 model.manifest.architecture, ",".join(model.engine.providers), model.load_seconds)
        self._changed()

    @staticmethod
    def _warm(model: LoadedModel, engine) -> None:
        for n in WARMUP_LENGTHS:
            n = min(n, model.manifest.max_tokens)
            ids = np.full((4, n), model.manifest.pad_token_id or 1, dtype=np.int64)
            engine.infer(ids, np.ones_like(ids), np.zeros_like(ids) if engine.needs_type_ids else None)
        if engine is model.engine:  # the last shape once more, timed: the queue's first rate estimate
            t0 = time.perf_counter()
            engine.infer(ids, np.ones_like(ids), np.zeros_like(ids) if engine.needs_type_ids else None)
            model.scheduler.rate.seed(time.perf_counter() - t0, ids.size)

    def _changed(self) -> None:
        if self.on_change:
            self.on_change()

    # ---- lookup -----------------------------------------------------------------------------
    def _default(self, task: str) -> LoadedModel | None:
        models = list(self.models.values())
        explicit = self.settings.default_embed_model if task == "embed" else self.settings.default_rerank_model
        if explicit:
            return self.models.get(explicit)
        if task == "rerank":
            cross = [m for m in models if m.manifest.task == "rerank"]
            if cross:
                return min(cross, key=lambda m: m.name)
            return self._default("embed")
        embed = [m for m in models if m.manifest.task == "embed"]
        return min(embed, key=lambda m: m.name) if embed else None

    def default_name(self, task: str) -> str:
        m = self._default(task)
        return m.name if m else ""

    def get(self, name: str, task: str) -> LoadedModel:
        """The model to serve a request for `task` ("embed", "rerank" or "any"); empty name = the default."""
        if not name:
            model = self._default(task) if task != "any" else (self._default("embed") or self._default("rerank"))
            if model is None:
                why = f": {self.errors['*']}" if "*" in self.errors else ""
                raise Unavailable(f"no {task} model is loaded{why}")
        else:
            model = self.models.get(name)
            if model is None:
                if name in self.errors:
                    raise Unavailable(f"model {name!r} failed to load: {self.errors[name]}")
                raise NotFound(f"model {name!r} is not loaded (loaded: {', '.join(sorted(self.models)) or 'none'})")
        if not model.ready:
            raise Unavailable(f"model {model.name!r} is still loading")
        if task == "embed" and model.manifest.task != "embed":
            raise InvalidArgument("model", f"{model.name!r} is a {model.manifest.task} model; it cannot embed")
        return model

    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    def stop(self) -> None:
        # A session still being built when the process exits would abort it: let the builds end.
        for t in self._lane_builders:
            t.join(60)
        for m in self.models.values():
            m.scheduler.stop()


