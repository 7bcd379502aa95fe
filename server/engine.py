"""Engine stage: one ONNX Runtime session per model, and the model-level post-processing.

Providers are tried in the configured order (TensorRT → CUDA → CPU by default). What ORT
really activated is read back from the session after creation, because a CUDA provider that
failed to load silently leaves a CPU-only session behind.
"""
from __future__ import annotations

import logging
import os
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


class Engine:
    """Runs padded batches through the model's graph and returns pooled vectors or scores."""

    def __init__(self, model_dir: Path, manifest: Manifest, providers: tuple[str, ...], intra_op_threads: int = 0,
                 spinning: bool = False):
        self.manifest = manifest
        self.creation_error = ""
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
        graph = str(model_dir / manifest.onnx_file)
        try:
            self.session = ort.InferenceSession(graph, opts, providers=chosen)
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
        if missing:
            log.warning("model %s: providers %s requested but not available in this onnxruntime build (%s)",
                        manifest.name, ",".join(missing), ",".join(sorted(available)))
        silent = [p for p in self.unavailable if p not in missing]
        if silent:
            log.warning("model %s: providers %s failed to activate; running on %s",
                        manifest.name, ",".join(silent), ",".join(self.providers))
        log.info("model %s: active providers %s", manifest.name, ",".join(self.providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.needs_type_ids = "token_type_ids" in self.input_names
        outputs = [o.name for o in self.session.get_outputs()]
        if manifest.output not in outputs:
            raise ValueError(f"graph has no output {manifest.output!r} (outputs: {outputs})")

    def infer(self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None) -> np.ndarray:
        """IN padded ids/mask/type ids [B, T] int64. OUT pooled [B, D] float32 (embed) or logits [B] (rerank)."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.needs_type_ids:
            feed["token_type_ids"] = type_ids if type_ids is not None else np.zeros_like(ids)
        out = self.session.run([self.manifest.output], feed)[0]
        if self.manifest.task == "rerank":
            return np.ascontiguousarray(out.reshape(out.shape[0], -1)[:, 0], dtype=np.float32)
        hidden = np.ascontiguousarray(out, dtype=np.float32)
        if self.manifest.pooling == "none":  # pooled (and projected) in the graph: [B, D]
            return hidden
        return kernels.pool(hidden, mask, self.manifest.pooling)
