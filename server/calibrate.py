"""`ember calibrate`: the int8 / uint8 ranges of a model's dense vectors, from a sample of texts.

Quantizing a vector into one byte per component needs, for each component, the range it spans:
the encoding maps [min, max] onto 256 steps (as sentence-transformers' quantize_embeddings does
with calibration embeddings). The ranges are those of the vectors the server returns (truncated
to each Matryoshka size, then normalized), measured on texts like the ones that will be indexed,
and recorded in the model's ember.json, where the server reads them (ENCODING_INT8 / UINT8).
The model runs here on the CPU with ONNX Runtime; no server and no PyTorch are needed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .errors import ModelLoadError
from .manifest import MANIFEST, Manifest, read_manifest

# Fewer texts than this give ranges from too few samples to trust (sentence-transformers warns below 100).
MIN_TEXTS = 100


class CalibrationError(Exception):
    pass


def calibrate(model_dir: Path, texts: list[str], *, input_type: str = "document", batch_size: int = 32) -> Manifest:
    """Measure the ranges on `texts`, write them into `model_dir`'s ember.json, return the manifest."""
    from .engine import Engine
    from .ext import kernels
    from .servicers import finish_embeddings, resolve_prompt
    from .tokenization import ModelTokenizer
    from . import domain

    try:
        m = read_manifest(model_dir)
    except ModelLoadError as e:
        raise CalibrationError(str(e)) from None
    if m.task != "embed" or "dense" not in m.outputs:
        raise CalibrationError(f"{model_dir}: model {m.name} has no dense vectors to calibrate")
    if len(texts) < MIN_TEXTS:
        raise CalibrationError(f"{len(texts)} texts are too few to calibrate on; give at least {MIN_TEXTS}, like "
                               "the texts that will be embedded")
    prompt = resolve_prompt(m, domain.QUERY if input_type == "query" else domain.DOCUMENT, "")
    engine = Engine(model_dir, m, ("cpu",), warn_missing=False)
    tokenizer = ModelTokenizer(model_dir, m, engine.needs_type_ids)
    pooled = []
    for i in range(0, len(texts), batch_size):
        toks = tokenizer.encode([prompt + t for t in texts[i:i + batch_size]], truncate=True, direction="right")
        lengths = np.array([t.tokens for t in toks], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids, mask = kernels.pack_batch(np.concatenate([t.ids for t in toks]), offsets, int(lengths.max()),
                                       m.pad_token_id, m.padding_side == "left")
        pooled.append(engine.infer(ids, mask, np.zeros_like(ids) if engine.needs_type_ids else None))
    raw = np.concatenate(pooled)
    ranges = {}
    for dims in sorted({m.dimensions, *m.matryoshka_dimensions}, reverse=True):
        v = finish_embeddings(raw, dims, True)
        ranges[str(dims)] = [v.min(axis=0).tolist(), v.max(axis=0).tolist()]
    m = dataclasses.replace(m, quantization_ranges=ranges)
    m.validate()
    (model_dir / MANIFEST).write_text(m.to_json())
    return m
