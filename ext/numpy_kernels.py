"""Pure-NumPy twins of the compiled kernels in `_kernels.pyx`.

Same signatures, same semantics. They are the oracle in the tests (which run every case on
both) and the fallback where the extension is not built.
"""
from __future__ import annotations

import numpy as np

POOLING_MODES = ("mean", "cls", "last", "max")


def _check(hidden: np.ndarray, mask: np.ndarray) -> None:
    if hidden.shape[0] != mask.shape[0] or hidden.shape[1] != mask.shape[1]:
        raise ValueError(f"hidden {hidden.shape[:3]} and mask {mask.shape[:2]} disagree")


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """IN hidden [B, T, D] float32, mask [B, T] int64. OUT [B, D] float32."""
    _check(hidden, mask)
    real = mask != 0
    B, T, _ = hidden.shape
    rows = np.arange(B)
    if mode == "mean":
        m = real.astype(np.float32)[:, :, None]
        counts = np.maximum(m.sum(axis=1), np.float32(1e-9))
        return ((hidden * m).sum(axis=1) / counts).astype(np.float32)
    if mode == "cls":
        first = np.where(real.any(axis=1), real.argmax(axis=1), 0)
        return np.ascontiguousarray(hidden[rows, first], dtype=np.float32)
    if mode == "last":
        last = np.where(real.any(axis=1), T - 1 - real[:, ::-1].argmax(axis=1), T - 1)
        return np.ascontiguousarray(hidden[rows, last], dtype=np.float32)
    if mode == "max":
        masked = np.where(real[:, :, None], hidden, -np.inf)
        out = masked.max(axis=1)
        out[~real.any(axis=1)] = 0.0
        return out.astype(np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """IN x [B, D] float32. OUT a new [B, D] float32 array with unit-norm rows."""
    norms = np.sqrt((x.astype(np.float32) ** 2).sum(axis=1, keepdims=True))
    return (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32)


def matryoshka(x: np.ndarray, dims: int, normalize: bool) -> np.ndarray:
    """IN x [B, D] float32, 0 < dims <= D. OUT [B, dims] float32."""
    if dims <= 0 or dims > x.shape[1]:
        raise ValueError(f"dims must be in 1..{x.shape[1]}, got {dims}")
    out = np.ascontiguousarray(x[:, :dims], dtype=np.float32)
    return l2_normalize(out) if normalize else out.copy()


def pack_batch(flat: np.ndarray, offsets: np.ndarray, seq_len: int, pad_id: int, left: bool,
               ids_out: np.ndarray | None = None, mask_out: np.ndarray | None = None):
    """IN flat ids, offsets [B+1], seq_len, pad_id, left, optional [B, seq_len] int64 arrays to
    write into. OUT (ids [B, seq_len], mask [B, seq_len]) int64."""
    B = len(offsets) - 1
    if B < 0:
        raise ValueError("offsets must have at least one element")
    ids = np.empty((B, seq_len), dtype=np.int64) if ids_out is None else ids_out
    mask = np.empty((B, seq_len), dtype=np.int64) if mask_out is None else mask_out
    if ids.shape != (B, seq_len) or mask.shape != (B, seq_len):
        raise ValueError(f"ids_out/mask_out must be [{B}, {seq_len}]")
    ids[...] = pad_id
    mask[...] = 0
    for r in range(B):
        row = flat[offsets[r]:offsets[r + 1]]
        n = offsets[r + 1] - offsets[r]
        if n < 0 or n > seq_len or offsets[r + 1] > len(flat):
            raise ValueError(f"row {r} has {n} tokens, which does not fit seq_len={seq_len}")
        if left:
            ids[r, seq_len - n:] = row
            mask[r, seq_len - n:] = 1
        else:
            ids[r, :n] = row
            mask[r, :n] = 1
    return ids, mask


def sigmoid(x: np.ndarray) -> np.ndarray:
    """IN x [N] float32. OUT [N] float32."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """IN scores [N] float32, n (0 or > N: all). OUT int64 indices, best first, ties by index."""
    scores = np.asarray(scores, dtype=np.float32)
    N = len(scores)
    if n <= 0 or n > N:
        n = N
    keyed = np.where(np.isnan(scores), -np.inf, scores)
    # lexsort: last key is primary. Descending score, then ascending index.
    order = np.lexsort((np.arange(N), -keyed.astype(np.float64)))
    return order[:n].astype(np.int64)


def plan_batches(lengths: np.ndarray, max_tokens: int, max_size: int, overhead: int) -> np.ndarray:
    """IN lengths [N] sorted descending. OUT batch end indices, least total (overhead + padded tokens)."""
    if max_size < 1 or max_tokens < 1:
        raise ValueError("max_tokens and max_size must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) > 1 and (np.diff(lengths) > 0).any():
        raise ValueError("lengths must be sorted in descending order")
    N = len(lengths)
    best = [0] + [None] * N
    cut = [0] * (N + 1)
    for i in range(1, N + 1):
        for j in range(i - 1, max(0, i - max_size) - 1, -1):
            n = i - j
            if n > 1 and n * lengths[j] > max_tokens:
                break
            c = best[j] + overhead + n * int(lengths[j])
            if best[i] is None or c < best[i]:
                best[i], cut[i] = c, j
    ends, k = [], N
    while k > 0:
        ends.append(k)
        k = cut[k]
    return np.array(ends[::-1], dtype=np.int64)


ENCODINGS = ("float16", "bfloat16", "int8", "uint8", "binary", "ubinary")


def encoded_width(encoding: str, dims: int) -> int:
    """Bytes one vector of `dims` components takes in `encoding` (float32 included)."""
    per = {"float32": dims * 4, "float16": dims * 2, "bfloat16": dims * 2, "int8": dims, "uint8": dims,
           "binary": (dims + 7) // 8, "ubinary": (dims + 7) // 8}
    if encoding not in per:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return per[encoding]


def encode(x: np.ndarray, encoding: str, starts=None, steps=None) -> np.ndarray:
    """IN x [B, D] float32; starts/steps [D] for int8/uint8. OUT [B, encoded_width] uint8."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    B, D = x.shape
    encoded_width(encoding, D)
    if encoding == "float16":
        return x.astype("<f2").view(np.uint8).reshape(B, 2 * D)
    if encoding == "bfloat16":
        u = x.view(np.uint32).astype(np.uint64)
        nan = np.isnan(x)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
        r[nan] = ((u[nan] >> 16) | 0x40).astype("<u2")
        return r.view(np.uint8).reshape(B, 2 * D)
    if encoding in ("int8", "uint8"):
        if starts is None or steps is None:
            raise ValueError(f"{encoding} needs starts and steps")
        starts = np.asarray(starts, dtype=np.float32)
        steps = np.asarray(steps, dtype=np.float32)
        if starts.shape != (D,) or steps.shape != (D,):
            raise ValueError(f"starts and steps must have {D} values")
        q = np.nan_to_num(np.floor((x - starts) / steps), nan=0.0)
        q = np.clip(q, 0, 255).astype(np.uint8)
        return q ^ np.uint8(0x80) if encoding == "int8" else q
    bits = np.packbits(x > 0, axis=-1).reshape(B, -1)
    return bits ^ np.uint8(0x80) if encoding == "binary" else bits
