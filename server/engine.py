"""Engine stage: one ONNX Runtime session per model, and the model-level post-processing.

Providers are tried in the configured order (TensorRT → CUDA → CPU by default). What ORT
really activated is read back from the session after creation, because a CUDA provider that
failed to load silently leaves a CPU-only session behind.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .ext import kernels
from .manifest import Manifest

log = logging.getLogger(__name__)

ORT_PROVIDER = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAME = {v: k for k, v in ORT_PROVIDER.items()}


def pin_plan(mode: str, threads: int) -> list[int]:
    """The cores (0-based) a CPU session of `threads` intra-op threads is pinned to, the first for
    the thread that calls it and one for each of its pool threads; [] for none (Settings.pin_threads).

    auto pins only when this process may use exactly `threads` cores: then the cores are its own
    (a 2-core VM, a pod with exclusive cores). Where it may use more, they are likely shared with
    other processes, which might all pin to the same first cores."""
    if mode == "off" or threads < 2 or not hasattr(os, "sched_getaffinity"):
        return []
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < threads or (mode == "auto" and len(allowed) != threads):
        return []
    return allowed[:threads]


def pin_session(opts, mode: str, what: str) -> int | None:
    """Pin the pool threads of the session `opts` will make (Settings.pin_threads): each on a core of
    its own from pin_plan. Returns the core left for the thread that calls the session, or None."""
    cores = pin_plan(mode, opts.intra_op_num_threads)
    if not cores:
        return None
    # One group per pool thread (ORT never pins the calling thread); ORT counts cores from 1.
    opts.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in cores[1:]))
    log.info("%s: session pinned to cores %s (the first for its caller; --pin-threads %s)", what,
             ",".join(map(str, cores)), mode)
    return cores[0]


_arena_lock = threading.Lock()
_arena_shared: bool | None = None  # None: not tried yet


def shared_cpu_arena() -> bool:
    """Register one CPU arena with ONNX Runtime's environment, once per process, for the sessions
    that ask for it (`session.use_env_allocators`); False where this build refuses it (then each
    session keeps its own, as by default)."""
    global _arena_shared
    with _arena_lock:
        if _arena_shared is None:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena
                _arena_shared = True
            except Exception as e:  # noqa: BLE001 - an old or unusual build: sessions keep their own arenas
                log.warning("a shared CPU memory arena is not available (%s: %s); each session has its own",
                            type(e).__name__, e)
                _arena_shared = False
        return _arena_shared


def length_buckets(max_tokens: int, smallest: int = 16) -> list[int]:
    """Upper edges of the sequence-length buckets: powers of two from `smallest`, then max_tokens."""
    edges, t = [], smallest
    while t < max_tokens:
        edges.append(t)
        t *= 2
    return edges + [max_tokens]


def trt_profiles(input_names: list[str], max_tokens: int, max_batch_tokens: int,
                 max_batch_size: int) -> dict[str, str]:
    """TensorRT min/opt/max shape profiles, one per length bucket, covering every batch the
    scheduler can make (B × T ≤ max_batch_tokens, B ≤ max_batch_size, T ≤ max_tokens), so TensorRT
    never has to build an engine for a new shape while serving. In ORT's format a tensor listed
    several times has one shape per profile."""
    mins, opts, maxs = [], [], []
    lo = 0
    for hi in length_buckets(max_tokens):
        b_max = max(1, min(max_batch_size, max_batch_tokens // (lo + 1)))
        b_opt = max(1, min(max_batch_size, max_batch_tokens // hi))
        for name in input_names:
            mins.append(f"{name}:1x{lo + 1}")
            opts.append(f"{name}:{b_opt}x{hi}")
            maxs.append(f"{name}:{b_max}x{hi}")
        lo = hi
    return {"trt_profile_min_shapes": ",".join(mins), "trt_profile_opt_shapes": ",".join(opts),
            "trt_profile_max_shapes": ",".join(maxs)}


def accelerator_options(settings, input_names: list[str], max_tokens: int, max_batch_tokens: int,
                        model_name: str) -> dict[str, dict[str, str]]:
    """ONNX Runtime options for the TensorRT and CUDA providers, from the server's settings."""
    trt_dir = Path(settings.trt_cache_dir) if settings.trt_cache_dir else settings.cache_path / "tensorrt"
    trt_dir = trt_dir / model_name
    trt = {
        "device_id": str(settings.device_id),
        "trt_fp16_enable": "True" if settings.trt_fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(trt_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(trt_dir),
        **trt_profiles(input_names, max_tokens,
                       max(max_batch_tokens, settings.bulk_max_batch_tokens, settings.bulk_solo_batch_tokens),
                       settings.max_batch_size),
    }
    cuda = {
        "device_id": str(settings.device_id),
        "arena_extend_strategy": {"same_as_requested": "kSameAsRequested",
                                  "next_power_of_two": "kNextPowerOfTwo"}[settings.cuda_arena_extend],
    }
    if settings.gpu_mem_limit_mb:
        cuda["gpu_mem_limit"] = str(settings.gpu_mem_limit_mb << 20)
    return {"tensorrt": trt, "cuda": cuda}


class Engine:
    """Runs padded batches through the model's graph and returns pooled vectors or scores."""

    def __init__(self, model_dir: Path, manifest: Manifest, providers: tuple[str, ...], intra_op_threads: int = 0,
                 spinning: bool = False, provider_options: dict[str, dict[str, str]] | None = None,
                 run_timeout_s: float = 0.0, spin_after_run: bool = True, pin: str = "off",
                 shared_arena: bool = False, warn_missing: bool = True):
        self.manifest = manifest
        self.creation_error = ""
        self.run_timeout_s = run_timeout_s
        provider_options = provider_options or {}
        available = set(ort.get_available_providers())
        wanted = [ORT_PROVIDER[p] for p in providers]
        chosen = [p for p in wanted if p in available]
        missing = [SHORT_NAME[p] for p in wanted if p not in available]
        if "CPUExecutionProvider" not in chosen:
            # The CPU provider is the last resort whatever was asked for: never fail to serve.
            chosen.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif not spin_after_run:
            # Spin while a run is in progress (its parallel sections follow each other within
            # microseconds), not for tens of ms after it, when nothing is left to spin for.
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        # Whether the session's CPU memory comes from the process's one arena (shared_cpu_arena).
        self.shared_arena = shared_arena and shared_cpu_arena()
        if self.shared_arena:
            opts.add_session_config_entry("session.use_env_allocators", "1")
        # The core the calling thread is pinned to for a run (ModelScheduler.run_inline), or None.
        self.caller_core = pin_session(opts, pin, f"model {manifest.name}")
        graph = str(model_dir / manifest.onnx_file)
        trt_cache = provider_options.get("tensorrt", {}).get("trt_engine_cache_path")
        if trt_cache and ORT_PROVIDER["tensorrt"] in chosen:
            Path(trt_cache).mkdir(parents=True, exist_ok=True)
        options = [provider_options.get(SHORT_NAME[p], {}) for p in chosen]
        try:
            self.session = ort.InferenceSession(graph, opts, providers=chosen, provider_options=options)
        except Exception as e:
            if chosen == ["CPUExecutionProvider"]:
                raise
            # An accelerator provider that throws while building the session (driver, out of
            # memory, an engine build failure) must not take the model down: serve it on the CPU.
            log.warning("model %s: creating the session with %s failed (%s); falling back to the CPU",
                        manifest.name, ",".join(SHORT_NAME.get(p, p) for p in chosen), e)
            self.creation_error = str(e)
            self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        active = self.session.get_providers()
        self.providers = [SHORT_NAME.get(p, p) for p in active]
        self.unavailable = [p for p in providers if ORT_PROVIDER[p] not in active]
        if missing and warn_missing:
            log.warning("model %s: providers %s requested but not available in this onnxruntime build (%s)",
                        manifest.name, ",".join(missing), ",".join(sorted(available)))
        silent = [p for p in self.unavailable if p not in missing]
        if silent:
            log.warning("model %s: providers %s failed to activate; running on %s",
                        manifest.name, ",".join(silent), ",".join(self.providers))
        log.info("model %s: active providers %s", manifest.name, ",".join(self.providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.needs_type_ids = "token_type_ids" in self.input_names
        outputs = {o.name: o for o in self.session.get_outputs()}
        if manifest.output not in outputs:
            raise ValueError(f"graph has no output {manifest.output!r} (outputs: {list(outputs)})")
        # The output's fixed trailing dimensions ([B, T, H] → (H,), [B, D] → (D,), [B] → ()), to bind
        # it to a pooled buffer; None when they are not all known (ORT then allocates the output).
        self._out_has_t = manifest.task == "embed" and manifest.pooling != "none"  # [B, T, H], pooled here
        shape = outputs[manifest.output].shape
        tail = shape[2:] if self._out_has_t else shape[1:]
        self._out_tail = tuple(tail) if all(isinstance(d, int) for d in tail) and \
            outputs[manifest.output].type == "tensor(float)" else None
        self.pool = None  # ember.ext BufferPool, set by the registry: inputs packed into pooled buffers
        # IO binding (the output written into a pooled buffer) pays on an accelerator, where the pool
        # is page-locked and the device→host copy lands there. On the CPU it saves nothing a batch
        # of 32 can measure, and its Python-side set-up (a binding object, a device per bound name)
        # costs ~0.2 ms of a single text's latency on a 2-core machine: the CPU runs the pooled inputs
        # through session.run instead.
        self.bind_io = self.providers[0] != "cpu"

    def _timed(self, run):
        """run(run_options) within the run timeout: a timer sets the options' terminate flag, so a
        run that takes too long (a hung or thrashing accelerator) raises instead of holding the model."""
        if not self.run_timeout_s:
            return run(None)
        ro = ort.RunOptions()
        timer = threading.Timer(self.run_timeout_s, setattr, (ro, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            return run(ro)
        except Exception as e:
            if ro.terminate:
                raise TimeoutError(f"the run took longer than {self.run_timeout_s * 1000:.0f} ms and was "
                                   "stopped") from e
            raise
        finally:
            timer.cancel()

    def _run(self, feed: dict) -> np.ndarray:
        return self._timed(lambda ro: self.session.run([self.manifest.output], feed, ro)[0])

    def _run_bound(self, feed: dict[str, np.ndarray], blocks: list) -> np.ndarray:
        """Run with IO binding: inputs read in place, the output written into a pooled buffer (a
        page-locked one on a GPU machine, so the device→host copy lands there directly)."""
        io = self.session.io_binding()
        for name, arr in feed.items():
            arr = np.ascontiguousarray(arr, dtype=np.int64)
            feed[name] = arr  # keep it alive through the run
            io.bind_input(name, "cpu", 0, np.int64, list(arr.shape), arr.ctypes.data)
        B, T = feed["input_ids"].shape
        shape = ((B, T) if self._out_has_t else (B,)) + self._out_tail
        block, out = self.pool.array(shape, np.float32)
        blocks.append(block)
        io.bind_output(self.manifest.output, "cpu", 0, np.float32, list(shape), out.ctypes.data)
        self._timed(lambda ro: self.session.run_with_iobinding(io, ro))
        return out

    def buffers(self, batch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list]:
        """Pooled input arrays for a [batch, seq_len] batch (ids, mask, type ids or None) and the
        blocks to give back with `release` after `infer`; plain arrays when there is no pool."""
        n = 3 if self.needs_type_ids else 2
        if self.pool is None:
            arrs = [np.empty((batch, seq_len), dtype=np.int64) for _ in range(n)]
            return arrs[0], arrs[1], arrs[2] if n == 3 else None, []
        pairs = [self.pool.array((batch, seq_len), np.int64) for _ in range(n)]
        return pairs[0][1], pairs[1][1], pairs[2][1] if n == 3 else None, [b for b, _ in pairs]

    def release(self, blocks: list) -> None:
        for b in blocks:
            self.pool.give(b)

    def infer(self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None,
              outputs: tuple[str, ...] | None = None) -> np.ndarray:
        """IN padded ids/mask/type ids [B, T] int64. OUT pooled [B, D] float32 (embed) or logits [B]
        (rerank); with `outputs` (manifest output names), a [B] object array of `Outputs`."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.needs_type_ids:
            feed["token_type_ids"] = type_ids if type_ids is not None else np.zeros_like(ids)
        if outputs is not None:
            return self._outputs(feed, outputs)
        if self.pool is None or self._out_tail is None or not self.bind_io:
            return self._post(self._run(feed), mask, copy=False)
        blocks: list = []
        try:
            return self._post(self._run_bound(feed, blocks), mask, copy=True)
        finally:
            self.release(blocks)

    def _outputs(self, feed: dict, wanted: tuple[str, ...]) -> np.ndarray:
        """Every output in `wanted` of each input, from one run of the graph."""
        m = self.manifest
        graph_name = {"dense": m.output, "sparse": m.sparse_output, "multi_vector": m.multi_vector_output}
        names = list(dict.fromkeys(graph_name[w] for w in wanted))
        got = dict(zip(names, self._timed(lambda ro: self.session.run(names, feed, ro)), strict=True))
        ids, mask = feed["input_ids"], feed["attention_mask"]
        B = ids.shape[0]
        dense = self._post(got[m.output], mask, copy=False) if "dense" in wanted else None
        sparse = multi = None
        if "sparse" in wanted:
            w = np.asarray(got[m.sparse_output], dtype=np.float32)
            sparse = vocab_weights(w) if m.sparse_kind == "vocab" else \
                token_weights(ids, mask, w.reshape(B, -1), m.sparse_skip_ids)
        if "multi_vector" in wanted:
            multi = token_vectors(np.asarray(got[m.multi_vector_output], dtype=np.float32), mask)
        rows = np.empty(B, dtype=object)
        for b in range(B):
            rows[b] = Outputs(None if dense is None else dense[b], None if sparse is None else sparse[b],
                              None if multi is None else multi[b])
        return rows

    def _post(self, out: np.ndarray, mask: np.ndarray, copy: bool) -> np.ndarray:
        """The model's answer from its raw output; with copy, never a view of `out` (a pooled buffer)."""
        if self.manifest.task == "rerank":
            logits = out.reshape(out.shape[0], -1)[:, 0]
            return np.array(logits, dtype=np.float32) if copy else np.ascontiguousarray(logits, dtype=np.float32)
        hidden = np.ascontiguousarray(out, dtype=np.float32)
        if self.manifest.pooling == "none":  # pooled (and projected) in the graph: [B, D]
            return hidden.copy() if copy else hidden
        return kernels.pool(hidden, mask, self.manifest.pooling)


class Outputs:
    """One input's outputs when more than its dense vector is asked for (Engine.infer(outputs=…)):
    the pooled dense vector (before truncation and normalization), the sparse weights as (ids
    ascending uint32, weights float32), and the token vectors [n, D] (normalized)."""

    __slots__ = ("dense", "sparse", "multi_vector")

    def __init__(self, dense, sparse, multi_vector):
        self.dense, self.sparse, self.multi_vector = dense, sparse, multi_vector


def token_weights(ids: np.ndarray, mask: np.ndarray, weights: np.ndarray, skip: tuple[int, ...]) -> list:
    """BGE-M3's lexical weights: each token id's largest weight over the input's real tokens,
    weights <= 0 and the ids in `skip` (its special tokens) dropped. IN [B, T] each."""
    out = []
    skipped = np.isin(ids, np.asarray(skip, dtype=ids.dtype)) if skip else np.zeros(ids.shape, dtype=bool)
    keep = (mask != 0) & (weights > 0) & ~skipped
    for b in range(ids.shape[0]):
        i, w = ids[b, keep[b]], weights[b, keep[b]]
        uniq, inv = np.unique(i, return_inverse=True)
        best = np.zeros(len(uniq), dtype=np.float32)
        np.maximum.at(best, inv, w)
        out.append((uniq.astype(np.uint32), best))
    return out


def vocab_weights(weights: np.ndarray) -> list:
    """A SPLADE graph's pooled [B, V] weights as (ids, weights) of the non-zero entries."""
    out = []
    for row in weights:
        nz = np.flatnonzero(row > 0)
        out.append((nz.astype(np.uint32), row[nz].astype(np.float32)))
    return out


def token_vectors(vectors: np.ndarray, mask: np.ndarray) -> list:
    """ColBERT vectors: one normalized row per real token but the first. IN [B, T, D], [B, T]."""
    out = []
    for b in range(vectors.shape[0]):
        real = np.flatnonzero(mask[b])[1:]
        out.append(kernels.l2_normalize(np.ascontiguousarray(vectors[b, real], dtype=np.float32)))
    return out
