"""The compiled kernels and their NumPy twin run the same cases; each is checked against a
plain reference written out here, so a bug shared by both twins still fails."""
import numpy as np
import pytest

from ember.ext import COMPILED, kernels, numpy_kernels

try:
    from ember.ext import _kernels as compiled
except ImportError:  # pragma: no cover
    compiled = None

IMPLS = [pytest.param(numpy_kernels, id="numpy"),
         pytest.param(compiled, id="cython", marks=pytest.mark.skipif(compiled is None, reason="not built"))]


def test_extension_is_built():
    assert COMPILED, "ember.ext._kernels should be compiled by `pip install -e .`"


def _batch(rng, left: bool):
    B, T, D = 5, 9, 7
    hidden = rng.standard_normal((B, T, D)).astype(np.float32)
    lengths = [9, 1, 4, 6, 3]
    mask = np.zeros((B, T), dtype=np.int64)
    for b, n in enumerate(lengths):
        if left:
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    return hidden, mask, lengths


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("left", [False, True])
def test_pooling_matches_reference(k, left):
    rng = np.random.default_rng(0)
    hidden, mask, lengths = _batch(rng, left)
    T = hidden.shape[1]
    for b, n in enumerate(lengths):
        rows = hidden[b, T - n:] if left else hidden[b, :n]
        np.testing.assert_allclose(k.pool(hidden, mask, "mean")[b], rows.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(k.pool(hidden, mask, "cls")[b], rows[0])
        np.testing.assert_array_equal(k.pool(hidden, mask, "last")[b], rows[-1])
        np.testing.assert_array_equal(k.pool(hidden, mask, "max")[b], rows.max(axis=0))


@pytest.mark.parametrize("k", IMPLS)
def test_pooling_all_masked_row_and_bad_input(k):
    hidden = np.ones((1, 3, 2), dtype=np.float32)
    mask = np.zeros((1, 3), dtype=np.int64)
    np.testing.assert_array_equal(k.pool(hidden, mask, "mean"), [[0.0, 0.0]])
    np.testing.assert_array_equal(k.pool(hidden, mask, "max"), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="pooling mode"):
        k.pool(hidden, mask, "median")
    with pytest.raises(ValueError):
        k.pool(hidden, np.zeros((2, 3), dtype=np.int64), "mean")


@pytest.mark.parametrize("k", IMPLS)
def test_l2_normalize(k):
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]], dtype=np.float32)
    out = k.l2_normalize(x)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])  # no NaN from a zero vector
    assert np.isfinite(out).all()
    assert x[0, 0] == 3.0, "input must not be modified"


@pytest.mark.parametrize("k", IMPLS)
def test_matryoshka_truncates_then_renormalizes(k):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    out = k.matryoshka(x, 8, True)
    assert out.shape == (4, 8)
    ref = x[:, :8] / np.linalg.norm(x[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(k.matryoshka(x, 8, False), x[:, :8])
    for bad in (0, 17):
        with pytest.raises(ValueError, match="dims"):
            k.matryoshka(x, bad, True)


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("left", [False, True])
def test_pack_batch(k, left):
    rows = [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]]
    flat = np.array([t for r in rows for t in r], dtype=np.int64)
    offsets = np.array([0, 3, 5, 10], dtype=np.int64)
    ids, mask = k.pack_batch(flat, offsets, 6, 0, left)
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == mask.dtype == np.int64
    for r, row in enumerate(rows):
        pad = 6 - len(row)
        if left:
            assert ids[r].tolist() == [0] * pad + row and mask[r].tolist() == [0] * pad + [1] * len(row)
        else:
            assert ids[r].tolist() == row + [0] * pad and mask[r].tolist() == [1] * len(row) + [0] * pad
    with pytest.raises(ValueError, match="does not fit"):
        k.pack_batch(flat, offsets, 4, 0, left)
    # into given arrays (the engine's pooled buffers), dirty beforehand: every cell is written
    ids_o, mask_o = np.full((3, 6), 99, dtype=np.int64), np.full((3, 6), 99, dtype=np.int64)
    got_ids, got_mask = k.pack_batch(flat, offsets, 6, 0, left, ids_o, mask_o)
    assert got_ids is ids_o and got_mask is mask_o
    np.testing.assert_array_equal(ids_o, ids)
    np.testing.assert_array_equal(mask_o, mask)
    with pytest.raises(ValueError, match="must be"):
        k.pack_batch(flat, offsets, 6, 0, left, np.empty((3, 5), dtype=np.int64), mask_o)


@pytest.mark.parametrize("k", IMPLS)
def test_sigmoid_is_stable(k):
    x = np.array([-1000.0, -2.0, 0.0, 2.0, 1000.0], dtype=np.float32)
    out = k.sigmoid(x)
    np.testing.assert_allclose(out, [0.0, 1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-2.0)), 1.0], rtol=1e-6)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("k", IMPLS)
def test_top_n(k):
    rng = np.random.default_rng(2)
    scores = rng.standard_normal(1000).astype(np.float32)
    full = sorted(range(1000), key=lambda i: (-scores[i], i))
    assert k.top_n(scores, 0).tolist() == full
    assert k.top_n(scores, 10).tolist() == full[:10]
    assert k.top_n(scores, 5000).tolist() == full
    ties = np.array([0.5, 0.9, 0.5, np.nan, 0.9], dtype=np.float32)
    assert k.top_n(ties, 0).tolist() == [1, 4, 0, 2, 3]  # ties by index, NaN last
    assert k.top_n(np.zeros(0, dtype=np.float32), 3).tolist() == []


def test_twins_agree_on_random_batches():
    if compiled is None:
        pytest.skip("not built")
    rng = np.random.default_rng(3)
    for _ in range(20):
        B, T, D = rng.integers(1, 9), rng.integers(1, 40), rng.integers(1, 64)
        hidden = rng.standard_normal((B, T, D)).astype(np.float32)
        mask = (rng.random((B, T)) > 0.3).astype(np.int64)
        for mode in ("mean", "cls", "last", "max"):
            np.testing.assert_allclose(compiled.pool(hidden, mask, mode), numpy_kernels.pool(hidden, mask, mode),
                                       rtol=1e-5, atol=1e-6)
        x = rng.standard_normal((B, D)).astype(np.float32)
        np.testing.assert_allclose(compiled.l2_normalize(x), numpy_kernels.l2_normalize(x), rtol=1e-5, atol=1e-7)
        s = rng.standard_normal(int(T)).astype(np.float32)
        assert compiled.top_n(s, 3).tolist() == numpy_kernels.top_n(s, 3).tolist()


def _brute_best(lengths, max_tokens, max_size, overhead):
    """Least total cost over every contiguous partition (small inputs only)."""
    N = len(lengths)
    best = {0: 0}
    for i in range(1, N + 1):
        cands = [best[j] + overhead + (i - j) * lengths[j] for j in range(i)
                 if i - j <= max_size and ((i - j) == 1 or (i - j) * lengths[j] <= max_tokens)]
        best[i] = min(cands)
    return best[N]


@pytest.mark.parametrize("k", IMPLS)
def test_plan_batches_is_least_cost_and_within_limits(k):
    rng = np.random.default_rng(4)
    for _ in range(40):
        n = int(rng.integers(1, 12))
        lengths = np.sort(rng.integers(1, 100, n))[::-1].astype(np.int64).copy()
        max_tokens, max_size, overhead = int(rng.integers(50, 400)), int(rng.integers(1, 6)), int(rng.integers(0, 40))
        ends = k.plan_batches(lengths, max_tokens, max_size, overhead).tolist()
        assert ends[-1] == n and ends == sorted(set(ends))
        starts = [0] + ends[:-1]
        cost = 0
        for s, e in zip(starts, ends, strict=True):
            assert e - s <= max_size and ((e - s) == 1 or (e - s) * lengths[s] <= max_tokens)
            cost += overhead + (e - s) * int(lengths[s])
        assert cost == _brute_best(lengths.tolist(), max_tokens, max_size, overhead)
    assert k.plan_batches(np.zeros(0, dtype=np.int64), 10, 2, 1).tolist() == []
    with pytest.raises(ValueError, match="descending"):
        k.plan_batches(np.array([1, 5], dtype=np.int64), 10, 2, 1)


def test_plan_batches_splits_mixed_lengths_to_avoid_padding():
    lengths = np.array([200, 190, 30, 28, 27, 25, 5, 5, 4, 4], dtype=np.int64)
    ends = kernels.plan_batches(lengths, 4096, 64, 16)
    assert list(ends) == [2, 6, 10]  # long, medium and short texts run apart


# ---- compact encodings --------------------------------------------------------------------------
def _unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _st_ranges(calibration):
    """starts/steps as quantize_embeddings computes them from calibration embeddings."""
    ranges = np.vstack((calibration.min(axis=0), calibration.max(axis=0)))
    steps = (ranges[1] - ranges[0]) / 255
    return ranges, ranges[0], np.where(steps == 0, 1, steps)


@pytest.mark.parametrize("k", IMPLS)
@pytest.mark.parametrize("dims", [384, 13, 1])
@pytest.mark.parametrize("precision", ["binary", "ubinary", "int8", "uint8"])
def test_encode_matches_sentence_transformers_quantize_embeddings(k, dims, precision):
    from sentence_transformers import quantize_embeddings

    rng = np.random.default_rng(dims)
    calibration, x = _unit_rows(rng, 500, dims), _unit_rows(rng, 64, dims)
    x[0, :] = 0.0  # a zero row: no bit set, every component at its range's start or above
    x[1, 0] = 5.0  # beyond the calibrated range: clipped
    ranges, starts, steps = _st_ranges(calibration)
    ref = quantize_embeddings(x, precision, ranges=ranges if precision.endswith("int8") else None)
    got = k.encode(x, precision, starts, steps)
    assert got.shape == (64, k.encoded_width(precision, dims))
    np.testing.assert_array_equal(got.view(ref.dtype), ref)


@pytest.mark.parametrize("k", IMPLS)
def test_encode_float16_is_numpy_half_bit_for_bit(k):
    rng = np.random.default_rng(1)
    edges = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e6, -1e6, 6e-5, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9,
                      np.inf, -np.inf, np.nan, 1.0009765625, 1.00048828125, 1.00146484375, 3.0517578e-05],
                     dtype=np.float32)
    x = np.concatenate([edges, rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-9, 5, 2000)])
    x = x.astype(np.float32).reshape(-1, 4)
    got = k.encode(x, "float16").view("<f2").reshape(x.shape)
    with np.errstate(over="ignore"):
        ref = x.astype("<f2")
    np.testing.assert_array_equal(got.view(np.uint16)[~np.isnan(ref)], ref.view(np.uint16)[~np.isnan(ref)])
    assert np.isnan(got[np.isnan(ref)]).all()


@pytest.mark.parametrize("k", IMPLS)
def test_encode_bfloat16_rounds_as_torch(k):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((50, 64)) * 10.0 ** rng.integers(-30, 30, (50, 64))).astype(np.float32)
    x[0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    got = k.encode(x, "bfloat16").view("<u2").reshape(x.shape)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(got, ref)
    x[1, 0] = np.nan
    assert (k.encode(x, "bfloat16").view("<u2")[1, 0] & 0x7FC0) == 0x7FC0  # still a nan


@pytest.mark.parametrize("k", IMPLS)
def test_encode_refuses_what_it_cannot_do(k):
    x = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="encoding"):
        k.encode(x, "int4")
    with pytest.raises(ValueError, match="starts and steps"):
        k.encode(x, "int8")
    with pytest.raises(ValueError, match="8 values"):
        k.encode(x, "uint8", np.zeros(7, np.float32), np.ones(7, np.float32))
