"""A CPU model's memory plan: the working memory of its batches, the shared arena, and what is
lowered or left out where the memory available would not hold them."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import subprocess
import sys

import pytest

from ember import registry as reg_module
from ember.manifest import Manifest, read_manifest
from ember.registry import (MEMORY_SHARE, WEIGHT_FACTOR, WEIGHT_FACTOR_BESIDE, Registry, arena_bytes, batch_bytes,
                            fit_budget, session_bytes, token_bytes, weights_bytes)
from ember.scheduler import REALTIME
from ember.servicers import Core, ServerState
from ember.settings import Settings

# In a process of its own (its RSS is all this measures): two sessions with arenas of their own,
# then two sharing the process's one arena, each run on the same batch; what each pair added.
PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
from ember.engine import Engine
from ember.manifest import read_manifest

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

path = Path(sys.argv[1]); m = read_manifest(path, verify=False)
ids = np.full((int(sys.argv[2]), m.max_tokens), 5, dtype=np.int64)
out, keep, first = {}, [], None
for shared in (False, True):
    a, b = (Engine(path, m, ("cpu",), 2, shared_arena=shared) for _ in range(2))
    keep += [a, b]
    before = rss()
    v = a.infer(ids, np.ones_like(ids), np.zeros_like(ids))
    one = rss() - before
    for e in (a, b, b):
        w = e.infer(ids, np.ones_like(ids), np.zeros_like(ids))
    first = v if first is None else first
    out["shared" if shared else "own"] = {"one": one, "both": rss() - before, "same": bool(
        np.allclose(first, v, atol=1e-5) and np.allclose(first, w, atol=1e-5)), "flag": a.shared_arena}
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_sessions_sharing_the_cpu_arena_keep_one_set_of_working_memory_and_the_plan_bounds_it(tiny_models_dir):
    path = tiny_models_dir / "tiny-embed"
    m = read_manifest(path, verify=False)
    rows = 32768 // m.max_tokens  # a batch big enough to stand out of the RSS's noise
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE, str(path), str(rows)], check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    own, shared = out["own"], out["shared"]
    batch = batch_bytes(path, m, rows * m.max_tokens)
    assert own["same"] and shared["same"] and shared["flag"] and not own["flag"]
    # the estimate bounds what one batch adds to a fresh session
    assert 0 < own["one"] <= batch, (own, batch)
    # after repeated batches an arena keeps ~2 batches' worth: two sessions of their own keep it
    # twice, two sharing the arena once, and the plan (arena_bytes) bounds both
    assert own["both"] <= 2 * arena_bytes(1, batch), (own, batch)
    assert shared["both"] <= arena_bytes(1, batch), (shared, batch)
    assert shared["both"] < 0.6 * own["both"], out


def test_token_bytes_grows_with_the_row_length_and_reads_the_model_config(tiny_models_dir, tmp_path):
    path = tiny_models_dir / "tiny-embed"
    m = read_manifest(path, verify=False)
    cfg = json.loads((path / "config.json").read_text())
    assert token_bytes(path, m) == 4 * (13 * cfg["hidden_size"] + 2.25 * cfg["num_attention_heads"] * m.max_tokens)
    assert token_bytes(path, m, 16) < token_bytes(path, m, 32) < token_bytes(path, m)
    # a budget smaller than one text of max_tokens still lets that text through, alone
    assert batch_bytes(path, m, 1) == batch_bytes(path, m, m.max_tokens) == m.max_tokens * token_bytes(path, m)
    # no config.json: the embedding size and a head per 64 of it
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    (bare / "config.json").unlink()
    assert token_bytes(bare, m) == int(4 * (13 * m.dimensions + 2.25 * max(1, m.dimensions // 64) * m.max_tokens))


def test_a_fused_decoder_graph_plans_its_key_value_heads_not_length_squared(tmp_path):
    """Qwen3 exported with --optimize (GroupQueryAttention): what a token costs does not grow with its
    row's length, but counts every layer's key and value heads; the plain Qwen3 graph's length² term
    is larger than an encoder's (benchmarks/RESULTS.md, the memory plan at real size)."""
    cfg = {"hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
           "num_hidden_layers": 28}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    plain = Manifest(name="q", task="embed", architecture="Qwen3Model", onnx_file="model.onnx",
                     output="last_hidden_state", dimensions=1024, pooling="last", max_tokens=8192,
                     family="qwen3-embedding")
    fused = dataclasses.replace(plain, optimize="O2")
    assert token_bytes(tmp_path, fused, 512) == token_bytes(tmp_path, fused, 8192) == \
        int(4 * (13 * 1024 + 2.1 * 8 * 128 * 28))
    assert token_bytes(tmp_path, plain, 8192) == int(4 * (13 * 1024 + 3.25 * 16 * 8192))
    encoder = dataclasses.replace(plain, family="bert", optimize="O2")  # an encoder's fusion keeps length²
    assert token_bytes(tmp_path, encoder, 8192) == int(4 * (13 * 1024 + 2.25 * 16 * 8192))


def test_the_batch_budget_is_lowered_to_what_the_memory_holds(tiny_models_dir, caplog):
    path = tiny_models_dir / "tiny-embed"
    m = read_manifest(path, verify=False)
    session, row = session_bytes(path, m), m.max_tokens
    per = token_bytes(path, m)
    plenty = 1 << 40
    assert fit_budget(path, m, session, plenty, 16384) == 16384
    assert "lowered" not in caplog.text
    # room for 10.5 rows' batches beside the weights: 10 rows of max_tokens
    free = int((session + arena_bytes(1, int(10.5 * row * per))) / MEMORY_SHARE)
    with caplog.at_level(logging.WARNING, logger="ember.registry"):
        lowered = fit_budget(path, m, session, free, 16384)
    assert lowered == 10 * row
    assert arena_bytes(1, batch_bytes(path, m, lowered)) <= MEMORY_SHARE * free - session
    assert f"max_batch_tokens lowered from 16384 to {lowered}" in caplog.text
    # not even one text of max_tokens fits: one at a time, and a warning that names max_tokens
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ember.registry"):
        assert fit_budget(path, m, session, int(session / MEMORY_SHARE), 16384) == row
        assert fit_budget(path, m, session, int(session / MEMORY_SHARE), row // 2) == row // 2
    assert "lower its max_tokens" in caplog.text


def test_a_model_loaded_where_memory_is_short_batches_within_it_and_still_serves(tiny_models_dir, monkeypatch,
                                                                                 caplog):
    path = tiny_models_dir / "tiny-embed"
    m = read_manifest(path, verify=False)
    free = int((session_bytes(path, m) + arena_bytes(1, int(4.5 * m.max_tokens * token_bytes(path, m)))) / MEMORY_SHARE)
    monkeypatch.setattr(reg_module, "memory_available", lambda: free)
    reg = Registry(Settings(intra_op_threads=2, inference_workers=1, max_batch_tokens=16384, metrics=False))
    with caplog.at_level(logging.INFO, logger="ember.registry"):
        model = reg.load(path)
    try:
        assert model.scheduler.max_batch_tokens == 4 * m.max_tokens
        assert model.scheduler.bulk_max_batch_tokens <= 4 * m.max_tokens
        assert "lowered from 16384" in caplog.text and "memory planned" in caplog.text
        # ListModels tells clients the budget the model really has
        info = Core(reg, reg.settings, ServerState()).list_models().models[0]
        assert (info.name, info.max_batch_tokens, info.lanes) == (model.name, 4 * m.max_tokens, 0)

        async def answer_many():  # more than one batch's worth, all answered
            toks = model.tokenizer.encode(["word " * 200] * 9, truncate=True, direction="right")
            job = model.scheduler.submit(toks, priority=REALTIME, deadline=None)
            return await job.future

        assert asyncio.run(answer_many()).shape == (9, m.dimensions)
    finally:
        model.scheduler.stop()


@pytest.mark.parametrize("shared", [True, False])
def test_lanes_are_left_out_where_their_batches_would_not_fit_though_their_weights_would(tiny_models_dir,
                                                                                       monkeypatch, caplog, shared):
    path = tiny_models_dir / "tiny-embed"
    reg = Registry(Settings(intra_op_threads=2, inference_workers=0, inline_max_tokens=0, metrics=False,
                            shared_cpu_arena=shared))
    model = reg.load(path, register=False)
    assert model.lane_plan == (2, 1) and model.engine.shared_arena == shared
    batch = batch_bytes(path, model.manifest, model.scheduler.max_batch_tokens)
    lane_weights = session_bytes(path, model.manifest)
    # shared: the arena keeps 3 batches for the lanes' 2 runs at once; own arenas: 2 for the main
    # session and 3 for the one lane session both workers share
    need = lane_weights + (arena_bytes(2, batch) if shared else arena_bytes(1, batch) + arena_bytes(2, batch))
    try:
        for free, built in ((int((lane_weights + batch) / MEMORY_SHARE), False), (int(need / MEMORY_SHARE) + 1, True)):
            monkeypatch.setattr(reg_module, "memory_available", lambda f=free: f)
            caplog.clear()
            reg.build_lanes(model)
            assert len(model.scheduler.lanes) == (2 if built else 0), (free, need)
            assert ("no lanes" in caplog.text) == (not built)
    finally:
        model.scheduler.stop()


# In a process of its own: the anonymous memory (weights copied or repacked; not the mapped file)
# that a second session of a model adds, for each model directory named.
SECOND_SESSION = r"""
import json, sys
from pathlib import Path
from ember.engine import Engine
from ember.manifest import read_manifest

def anon():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

out, keep = [], []
for d in sys.argv[1:]:
    path = Path(d); m = read_manifest(path, verify=False)
    keep.append(Engine(path, m, ("cpu",), 2))
    before = anon()
    keep.append(Engine(path, m, ("cpu",), 2))
    out.append(anon() - before)
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_sessions_of_a_model_share_weights_held_beside_its_graph(minilm_server, tmp_path):
    import onnx

    beside = minilm_server.server.registry.models["all-MiniLM-L6-v2"].path  # as `ember export` writes it
    m = read_manifest(beside, verify=False)
    assert (beside / (m.onnx_file + "_data")).is_file()
    inside = tmp_path / "inside"  # the same model with its weights in the graph file (older exports)
    shutil.copytree(beside, inside, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
    onnx.save_model(onnx.load(str(beside / m.onnx_file)), str(inside / m.onnx_file))
    weights = weights_bytes(beside, m)
    assert abs(weights_bytes(inside, m) - weights) < 0.01 * weights
    assert session_bytes(beside, m) == int(WEIGHT_FACTOR_BESIDE * weights)
    assert session_bytes(inside, m) == int(WEIGHT_FACTOR * weights_bytes(inside, m))
    second_beside, second_inside = json.loads(subprocess.run(
        [sys.executable, "-c", SECOND_SESSION, str(beside), str(inside)], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1])
    # beside: a second session holds only its repacked copies, within the plan's figure; inside, it
    # copies the weights again
    assert 0 < second_beside <= session_bytes(beside, m), (second_beside, weights)
    assert second_beside < 0.6 * second_inside, (second_beside, second_inside)


# In a process of its own: 40 MB of 2 KB blocks from the C heap, nine in ten freed (holes glibc
# keeps mapped), then release_free_heap; RSS in MB at each step.
TRIM_PROBE = r"""
import json
from ember.registry import release_free_heap

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024

blocks = [bytes(2048) for _ in range(20000)]
full = rss()
kept = blocks[::10]
del blocks
freed = rss()
release_free_heap()
print(json.dumps({"full": full, "freed": freed, "trimmed": rss()}))
"""


def test_release_free_heap_hands_freed_pages_back():
    """After a model's load, the free pages the load left in the C heap go back to the OS."""
    import ctypes

    try:
        getattr(ctypes.CDLL("libc.so.6"), "malloc_trim")  # noqa: B009 - is it there?
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    out = json.loads(subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["freed"] - out["trimmed"] > 15, out  # most of the ~36 MB freed in holes
