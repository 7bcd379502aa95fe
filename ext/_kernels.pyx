# cython: language_level=3
"""Compiled post-processing kernels (the hot path after ONNX Runtime).

Every function here has a pure-NumPy twin in `numpy_kernels.py` with the same signature and
semantics; the tests run the same cases against both. Inner loops run without the GIL so that
other request threads (tokenization, response building) keep going.

Conventions: `hidden` is float32 [batch, seq, dim] C-contiguous, `mask` is int64 [batch, seq]
(1 = real token). Outputs are new float32 arrays unless stated.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport sqrtf, expf, floorf, INFINITY
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from _types cimport f32, i64, ScoredIndex

cnp.import_array()

# Pooling modes, as named in ember.json manifests.
POOLING_MODES = ("mean", "cls", "last", "max")


cdef void _mean_pool(const f32[:, :, ::1] hidden, const i64[:, ::1] mask, f32[:, ::1] out) noexcept nogil:
    cdef Py_ssize_t b, t, d
    cdef Py_ssize_t B = hidden.shape[0], T = hidden.shape[1], D = hidden.shape[2]
    cdef f32 count, inv
    for b in range(B):
        for d in range(D):
            out[b, d] = 0.0
        count = 0.0
        for t in range(T):
            if mask[b, t] != 0:
                count += 1.0
                for d in range(D):
                    out[b, d] += hidden[b, t, d]
        # sentence-transformers clamps the token count at 1e-9.
        inv = 1.0 / (count if count > 1e-9 else <f32>1e-9)
        for d in range(D):
            out[b, d] *= inv


cdef void _max_pool(const f32[:, :, ::1] hidden, const i64[:, ::1] mask, f32[:, ::1] out) noexcept nogil:
    cdef Py_ssize_t b, t, d
    cdef Py_ssize_t B = hidden.shape[0], T = hidden.shape[1], D = hidden.shape[2]
    cdef bint seen
    for b in range(B):
        seen = False
        for d in range(D):
            out[b, d] = -INFINITY
        for t in range(T):
            if mask[b, t] != 0:
                seen = True
                for d in range(D):
                    if hidden[b, t, d] > out[b, d]:
                        out[b, d] = hidden[b, t, d]
        if not seen:
            for d in range(D):
                out[b, d] = 0.0


cdef void _cls_pool(const f32[:, :, ::1] hidden, const i64[:, ::1] mask, f32[:, ::1] out) noexcept nogil:
    # The first real token: position 0 with right padding, the first unmasked one with left padding.
    cdef Py_ssize_t b, t, d, pos
    cdef Py_ssize_t B = hidden.shape[0], T = hidden.shape[1], D = hidden.shape[2]
    for b in range(B):
        pos = 0
        for t in range(T):
            if mask[b, t] != 0:
                pos = t
                break
        for d in range(D):
            out[b, d] = hidden[b, pos, d]


cdef void _last_pool(const f32[:, :, ::1] hidden, const i64[:, ::1] mask, f32[:, ::1] out) noexcept nogil:
    # The last real token, whichever side the batch was padded on.
    cdef Py_ssize_t b, t, d, pos
    cdef Py_ssize_t B = hidden.shape[0], T = hidden.shape[1], D = hidden.shape[2]
    for b in range(B):
        pos = T - 1
        t = T - 1
        while t >= 0:
            if mask[b, t] != 0:
                pos = t
                break
            t -= 1
        for d in range(D):
            out[b, d] = hidden[b, pos, d]


def pool(const f32[:, :, ::1] hidden, const i64[:, ::1] mask, str mode):
    """Pool token states into one vector per row.

    IN  hidden [B, T, D] float32, mask [B, T] int64, mode in POOLING_MODES
    OUT [B, D] float32
    """
    if hidden.shape[0] != mask.shape[0] or hidden.shape[1] != mask.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)[:3]} and mask {tuple(mask.shape)[:2]} disagree")
    out_arr = np.empty((hidden.shape[0], hidden.shape[2]), dtype=np.float32)
    cdef f32[:, ::1] out = out_arr
    if mode == "mean":
        with nogil:
            _mean_pool(hidden, mask, out)
    elif mode == "cls":
        with nogil:
            _cls_pool(hidden, mask, out)
    elif mode == "last":
        with nogil:
            _last_pool(hidden, mask, out)
    elif mode == "max":
        with nogil:
            _max_pool(hidden, mask, out)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    return out_arr


cdef void _normalize_rows(f32[:, ::1] x) noexcept nogil:
    cdef Py_ssize_t b, d
    cdef f32 norm, inv
    for b in range(x.shape[0]):
        norm = 0.0
        for d in range(x.shape[1]):
            norm += x[b, d] * x[b, d]
        norm = sqrtf(norm)
        # torch.nn.functional.normalize: x / max(||x||, eps), eps = 1e-12
        inv = 1.0 / (norm if norm > 1e-12 else <f32>1e-12)
        for d in range(x.shape[1]):
            x[b, d] *= inv


def l2_normalize(const f32[:, ::1] x):
    """IN x [B, D] float32. OUT a new [B, D] float32 array, each row of unit L2 norm."""
    out_arr = np.array(x, dtype=np.float32, copy=True, order="C")
    cdef f32[:, ::1] out = out_arr
    with nogil:
        _normalize_rows(out)
    return out_arr


def matryoshka(const f32[:, ::1] x, Py_ssize_t dims, bint normalize):
    """Keep the first `dims` components of each row, then re-normalize if asked.

    IN  x [B, D] float32, 0 < dims <= D
    OUT [B, dims] float32 (a new array)
    """
    if dims <= 0 or dims > x.shape[1]:
        raise ValueError(f"dims must be in 1..{x.shape[1]}, got {dims}")
    out_arr = np.empty((x.shape[0], dims), dtype=np.float32)
    cdef f32[:, ::1] out = out_arr
    cdef Py_ssize_t b, d
    with nogil:
        for b in range(x.shape[0]):
            for d in range(dims):
                out[b, d] = x[b, d]
        if normalize:
            _normalize_rows(out)
    return out_arr


def pack_batch(const i64[::1] flat, const i64[::1] offsets, Py_ssize_t seq_len, i64 pad_id, bint left,
               ids_out=None, mask_out=None):
    """Pack variable-length token id rows into a padded batch.

    IN  flat: all rows' ids concatenated; offsets [B+1]: row r is flat[offsets[r]:offsets[r+1]];
        seq_len >= the longest row; pad_id; left: pad on the left (decoder models) else right;
        ids_out / mask_out: C-contiguous int64 [B, seq_len] arrays to write into (e.g. pooled
        buffers), else new ones are made
    OUT (ids [B, seq_len] int64, mask [B, seq_len] int64)
    """
    cdef Py_ssize_t B = offsets.shape[0] - 1
    if B < 0:
        raise ValueError("offsets must have at least one element")
    ids_arr = np.empty((B, seq_len), dtype=np.int64) if ids_out is None else ids_out
    mask_arr = np.empty((B, seq_len), dtype=np.int64) if mask_out is None else mask_out
    if ids_arr.shape != (B, seq_len) or mask_arr.shape != (B, seq_len):
        raise ValueError(f"ids_out/mask_out must be [{B}, {seq_len}]")
    cdef i64[:, ::1] ids = ids_arr
    cdef i64[:, ::1] mask = mask_arr
    cdef Py_ssize_t r, t, n, start, pad
    for r in range(B):
        n = offsets[r + 1] - offsets[r]
        if n < 0 or n > seq_len or offsets[r + 1] > flat.shape[0]:
            raise ValueError(f"row {r} has {n} tokens, which does not fit seq_len={seq_len}")
    with nogil:
        for r in range(B):
            start = offsets[r]
            n = offsets[r + 1] - start
            pad = seq_len - n
            if left:
                for t in range(pad):
                    ids[r, t] = pad_id
                    mask[r, t] = 0
                for t in range(n):
                    ids[r, pad + t] = flat[start + t]
                    mask[r, pad + t] = 1
            else:
                for t in range(n):
                    ids[r, t] = flat[start + t]
                    mask[r, t] = 1
                for t in range(n, seq_len):
                    ids[r, t] = pad_id
                    mask[r, t] = 0
    return ids_arr, mask_arr


def sigmoid(const f32[::1] x):
    """IN x [N] float32. OUT [N] float32 = 1 / (1 + exp(-x)), computed without overflow."""
    out_arr = np.empty(x.shape[0], dtype=np.float32)
    cdef f32[::1] out = out_arr
    cdef Py_ssize_t i
    cdef f32 e
    with nogil:
        for i in range(x.shape[0]):
            if x[i] >= 0:
                out[i] = 1.0 / (1.0 + expf(-x[i]))
            else:
                e = expf(x[i])
                out[i] = e / (1.0 + e)
    return out_arr


cdef inline bint _better(ScoredIndex a, ScoredIndex b) noexcept nogil:
    # Higher score first; on ties the lower index first (a stable order).
    if a.score != b.score:
        return a.score > b.score
    return a.index < b.index


cdef void _sift_down(ScoredIndex* heap, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    # Min-heap by `_better`: the root is the worst of the kept items.
    cdef Py_ssize_t child, worst
    cdef ScoredIndex tmp
    while True:
        worst = i
        child = 2 * i + 1
        if child < n and _better(heap[worst], heap[child]):
            worst = child
        child += 1
        if child < n and _better(heap[worst], heap[child]):
            worst = child
        if worst == i:
            return
        tmp = heap[i]
        heap[i] = heap[worst]
        heap[worst] = tmp
        i = worst


def top_n(const f32[::1] scores, Py_ssize_t n):
    """Indices of the n best scores, best first (ties: lower index first). NaN sorts last.

    IN  scores [N] float32, n >= 0 (n = 0 or n > N: all)
    OUT [min(n, N)] int64
    """
    cdef Py_ssize_t N = scores.shape[0]
    if n <= 0 or n > N:
        n = N
    heap_arr = np.empty(n, dtype=np.dtype([("score", np.float32), ("index", np.int64)], align=True))
    out_arr = np.empty(n, dtype=np.int64)
    cdef i64[::1] out = out_arr
    if n == 0:
        return out_arr
    cdef ScoredIndex* heap = <ScoredIndex*> cnp.PyArray_DATA(heap_arr)
    cdef Py_ssize_t i, k
    cdef ScoredIndex item, tmp
    with nogil:
        for i in range(N):
            item.score = scores[i] if scores[i] == scores[i] else -INFINITY
            item.index = i
            if i < n:
                heap[i] = item
                if i == n - 1:
                    k = n // 2
                    while k > 0:
                        k -= 1
                        _sift_down(heap, n, k)
            elif _better(item, heap[0]):
                heap[0] = item
                _sift_down(heap, n, 0)
        # Pop the worst to the back: the heap array ends up sorted best first.
        k = n
        while k > 1:
            k -= 1
            tmp = heap[0]
            heap[0] = heap[k]
            heap[k] = tmp
            _sift_down(heap, k, 0)
        for i in range(n):
            out[i] = heap[i].index
    return out_arr


def plan_batches(const i64[::1] lengths, i64 max_tokens, i64 max_size, i64 overhead):
    """Split length-sorted items into contiguous batches of least total cost.

    Cost of a batch = overhead + count × its longest length (the padded tokens it runs). An exact
    dynamic program over the sorted list; a batch never exceeds max_size items, nor max_tokens
    padded tokens unless it holds a single item.
    IN  lengths [N] int64 sorted descending; max_tokens, max_size >= 1; overhead >= 0 (in tokens)
    OUT ends [K] int64: batch k holds items ends[k-1]..ends[k]-1 (ends[-1] = N)
    """
    cdef Py_ssize_t N = lengths.shape[0]
    cdef Py_ssize_t i, j, lo, k
    cdef i64 c
    if max_size < 1 or max_tokens < 1:
        raise ValueError("max_tokens and max_size must be >= 1")
    for i in range(1, N):
        if lengths[i] > lengths[i - 1]:
            raise ValueError("lengths must be sorted in descending order")
    best_arr = np.zeros(N + 1, dtype=np.int64)
    cut_arr = np.zeros(N + 1, dtype=np.int64)
    cdef i64[::1] best = best_arr
    cdef i64[::1] cut = cut_arr
    with nogil:
        for i in range(1, N + 1):
            best[i] = -1
            lo = i - max_size
            if lo < 0:
                lo = 0
            j = i - 1
            while j >= lo:
                # items j..i-1; the longest is lengths[j]
                if (i - j) > 1 and (i - j) * lengths[j] > max_tokens:
                    break  # going further back only makes the batch longer and larger
                c = best[j] + overhead + (i - j) * lengths[j]
                if best[i] < 0 or c < best[i]:
                    best[i] = c
                    cut[i] = j
                j -= 1
    ends = []
    k = N
    while k > 0:
        ends.append(k)
        k = cut[k]
    return np.array(ends[::-1], dtype=np.int64)


# ---- compact encodings of finished (truncated, normalized) vectors ------------------------------
# Names as in Encoding (ember.proto) and sentence-transformers' quantize_embeddings precisions.
ENCODINGS = ("float16", "bfloat16", "int8", "uint8", "binary", "ubinary")


def encoded_width(str encoding, Py_ssize_t dims):
    """Bytes one vector of `dims` components takes in `encoding` (float32 included)."""
    if encoding == "float32":
        return dims * 4
    if encoding in ("float16", "bfloat16"):
        return dims * 2
    if encoding in ("int8", "uint8"):
        return dims
    if encoding in ("binary", "ubinary"):
        return (dims + 7) // 8
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


cdef inline uint32_t _bits(f32 v) noexcept nogil:
    cdef uint32_t u
    memcpy(&u, &v, 4)
    return u


cdef inline uint16_t _half(uint32_t f) noexcept nogil:
    # IEEE binary16 from binary32, round to nearest even (as NumPy's npy_floatbits_to_halfbits).
    cdef uint32_t f_exp = f & 0x7f800000u, f_sig
    cdef uint16_t h_sgn = <uint16_t>((f & 0x80000000u) >> 16), h_exp, h_sig
    if f_exp >= 0x47800000u:  # too large for a half, or inf / nan
        if f_exp == 0x7f800000u:
            f_sig = f & 0x007fffffu
            if f_sig != 0:
                h_sig = <uint16_t>(0x7c00u + (f_sig >> 13))
                if h_sig == 0x7c00u:  # keep a nan a nan
                    h_sig += 1
                return h_sgn + h_sig
        return h_sgn + 0x7c00u
    if f_exp <= 0x38000000u:  # a subnormal half, or zero
        if f_exp < 0x33000000u:
            return h_sgn
        f_exp >>= 23
        f_sig = 0x00800000u + (f & 0x007fffffu)
        f_sig >>= (113 - f_exp)
        if (f_sig & 0x00003fffu) != 0x00001000u or (f & 0x000007ffu):
            f_sig += 0x00001000u
        return h_sgn + <uint16_t>(f_sig >> 13)
    h_exp = <uint16_t>((f_exp - 0x38000000u) >> 13)
    f_sig = f & 0x007fffffu
    if (f_sig & 0x00003fffu) != 0x00001000u:
        f_sig += 0x00001000u
    return h_sgn + <uint16_t>(h_exp + (f_sig >> 13))


cdef inline uint16_t _bfloat(uint32_t u) noexcept nogil:
    # The upper half of binary32, rounded to nearest even; a nan stays a (quiet) nan.
    if (u & 0x7f800000u) == 0x7f800000u and (u & 0x007fffffu):
        return <uint16_t>((u >> 16) | 0x40u)
    u += 0x7fffu + ((u >> 16) & 1u)
    return <uint16_t>(u >> 16)


def encode(const f32[:, ::1] x, str encoding, starts=None, steps=None):
    """Vectors in a compact encoding, as sentence-transformers' quantize_embeddings writes them.

    IN  x [B, D] float32 (finished vectors); for int8/uint8, starts and steps [D] float32 (a
        range's low end and (high - low) / 255, a zero step counted as 1)
    OUT [B, encoded_width(encoding, D)] uint8: each row one vector's bytes, little-endian
        float16 / bfloat16: IEEE half / bfloat16 of each component, rounded to nearest even
        uint8: clip(floor((x - start) / step), 0, 255); int8: that - 128
        ubinary: the sign bits (x > 0), 8 per byte, the first component in the high bit, the last
        byte padded with 0 bits; binary: each such byte - 128 (as int8)
    """
    cdef Py_ssize_t B = x.shape[0], D = x.shape[1], W = encoded_width(encoding, D)
    cdef Py_ssize_t b, d
    out_arr = np.zeros((B, W), dtype=np.uint8)
    cdef uint8_t[:, ::1] out = out_arr
    cdef const f32[::1] st
    cdef const f32[::1] sp
    cdef f32 q
    cdef uint16_t h
    cdef uint8_t byte, flip
    cdef bint half = encoding == "float16"
    if encoding in ("float16", "bfloat16"):
        with nogil:
            for b in range(B):
                for d in range(D):
                    h = _half(_bits(x[b, d])) if half else _bfloat(_bits(x[b, d]))
                    out[b, 2 * d] = <uint8_t>(h & 0xff)
                    out[b, 2 * d + 1] = <uint8_t>(h >> 8)
    elif encoding in ("int8", "uint8"):
        if starts is None or steps is None:
            raise ValueError(f"{encoding} needs starts and steps")
        st = np.ascontiguousarray(starts, dtype=np.float32)
        sp = np.ascontiguousarray(steps, dtype=np.float32)
        if st.shape[0] != D or sp.shape[0] != D:
            raise ValueError(f"starts and steps must have {D} values")
        flip = 0x80 if encoding == "int8" else 0
        with nogil:
            for b in range(B):
                for d in range(D):
                    q = floorf((x[b, d] - st[d]) / sp[d])
                    if not q > 0:  # (nan too)
                        q = 0
                    elif q > 255:
                        q = 255
                    out[b, d] = (<uint8_t>q) ^ flip
    else:
        flip = 0x80 if encoding == "binary" else 0
        with nogil:
            for b in range(B):
                byte = 0
                for d in range(D):
                    byte = (byte << 1) | (1 if x[b, d] > 0 else 0)
                    if d % 8 == 7:
                        out[b, d // 8] = byte ^ flip
                        byte = 0
                if D % 8:
                    out[b, D // 8] = (<uint8_t>(byte << (8 - D % 8))) ^ flip
    return out_arr
