"""Bulk jobs at scale: `ember embed` over several replicas (every one working, one killed mid-job),
and one input split into shards run separately and merged.

Replicas are `ember serve` processes on loopback, each pinned to one core with one intra-op thread.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port
from test_bulk import ember, kill_after, write_jsonl
from test_reliability import _wait_serving

N = 20_000


def _replica(models_dir: Path, core: int) -> tuple[subprocess.Popen, str, int]:
    port, metrics = free_port(), free_port()
    pin = ["taskset", "-c", str(core % (os.cpu_count() or 1))] if shutil.which("taskset") else []
    proc = subprocess.Popen([*pin, sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--metrics-port", str(metrics), "--models-dir", str(models_dir), "--models", "tiny-embed",
                             "--intra-op-threads", "1", "--log-level", "error"])
    address = f"127.0.0.1:{port}"
    _wait_serving(address)
    return proc, address, metrics


def _embeds_answered(metrics_port: int) -> float:
    """The replica's ember_requests_total for Embed answered OK (a stream's messages count as Embeds)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for labels, value in re.findall(r"^ember_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        if 'rpc="Embed"' in labels and 'code="OK"' in labels:
            total += float(value)
    return total


@pytest.fixture(scope="module")
def replicas(tiny_models_dir):
    procs = [_replica(tiny_models_dir, core) for core in (0, 1)]
    yield procs
    for proc, _, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _, _ in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def big_input(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("scale") / "corpus.jsonl", N)


def test_embed_keeps_both_replicas_busy_with_the_one_replica_output(replicas, big_input, tmp_path):
    (_, a, ma), (_, b, mb) = replicas
    common = ["--chunk-size", "1024", "--batch-size", "32", "--no-progress"]
    one = tmp_path / "one.npy"
    r = ember("embed", str(big_input), "-o", str(one), "--server", a, *common)
    assert r.returncode == 0, r.stderr
    before = _embeds_answered(ma), _embeds_answered(mb)
    both = tmp_path / "both.npy"
    r = ember("embed", str(big_input), "-o", str(both), "--server", f"{a},{b}", *common)
    assert r.returncode == 0, r.stderr
    shares = [_embeds_answered(ma) - before[0], _embeds_answered(mb) - before[1]]
    print(f"\ntwo replicas: stream messages answered {shares[0]:.0f} / {shares[1]:.0f}")
    assert sum(shares) == N // 32 + (N % 32 > 0)  # every message answered once, by one of them
    assert min(shares) >= 0.3 * sum(shares)  # both worked
    np.testing.assert_allclose(np.load(both), np.load(one), atol=1e-6)
    assert json.loads((tmp_path / "both.ids.json").read_text()) == [f"doc-{i}" for i in range(N)]


def test_a_replica_killed_mid_job_leaves_the_job_to_the_other(tiny_models_dir, big_input, tmp_path):
    first, second = _replica(tiny_models_dir, 0), _replica(tiny_models_dir, 1)
    try:
        ref = tmp_path / "ref.npy"
        common = ["--chunk-size", "1024", "--batch-size", "32", "--no-progress"]
        assert ember("embed", str(big_input), "-o", str(ref), "--server", second[1], *common).returncode == 0
        out = tmp_path / "out.npy"
        job = subprocess.Popen([sys.executable, "-m", "ember", "embed", str(big_input), "-o", str(out), "--server",
                                f"{first[1]},{second[1]}", *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        partial = tmp_path / "out.npy.partial"
        while len(list(partial.glob("chunk-*.npy"))) < 2 and job.poll() is None:
            pass
        assert job.poll() is None and len(list(partial.glob("chunk-*.npy"))) < 20  # the job is under way
        first[0].send_signal(signal.SIGKILL)  # mid-job, without a drain
        stdout, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr
        assert f"embedded {N} texts ({N} in this run)" in stdout
        np.testing.assert_allclose(np.load(out), np.load(ref), atol=1e-6)
        assert json.loads((tmp_path / "out.ids.json").read_text()) == [f"doc-{i}" for i in range(N)]
    finally:
        for proc, _, _ in (first, second):
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def test_three_shards_run_apart_one_killed_and_resumed_merge_to_the_unsharded_output(replicas, big_input, tmp_path):
    (_, a, _), _ = replicas
    common = ["--server", a, "--chunk-size", "512", "--batch-size", "32", "--no-progress"]
    whole = tmp_path / "whole.npy"
    assert ember("embed", str(big_input), "-o", str(whole), *common).returncode == 0
    out = tmp_path / "parts.npy"
    for index in (0, 2):
        r = ember("embed", str(big_input), "-o", str(out), "--shard", f"{index}/3", *common)
        assert r.returncode == 0, r.stderr
    middle = tmp_path / "parts.shard-0001-of-0003.npy"
    partial = middle.with_name(middle.name + ".partial")
    done = kill_after(["embed", str(big_input), "-o", str(out), "--shard", "1/3", *common], partial, 3)
    assert 3 <= done < 14
    r = ember("merge", str(out))
    assert r.returncode == 2 and "1 of 3 shards" in r.stderr and "index 1" in r.stderr  # not yet
    r = ember("embed", str(big_input), "-o", str(out), "--shard", "job/3", *common,
              env={**os.environ, "JOB_COMPLETION_INDEX": "1"})  # as a Kubernetes Indexed Job runs it
    assert r.returncode == 0, r.stderr
    assert f"resuming: {done} of 14 chunks already done" in r.stderr
    r = ember("merge", str(out))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), np.load(whole), atol=1e-6)
    ids = [json.loads((tmp_path / f"{n}.ids.json").read_text()) for n in ("parts", "whole")]
    assert ids[0] == ids[1]


def _reference(address: str, texts: list[str], batch_size: int) -> np.ndarray:
    from ember_client import Client

    with Client(address) as c:
        return np.concatenate(list(c.embed_stream(texts, batch_size=batch_size)))


def test_async_client_streams_over_both_replicas_in_order(replicas):
    """AsyncClient.embed_stream(streams=4) over two replicas: every batch once, in order, the same
    vectors as one stream to one replica, and both replicas answered a share."""
    import asyncio

    from ember_client import AsyncClient

    (_, a, ma), (_, b, mb) = replicas
    texts = [f"async text number {i}" for i in range(3000)]
    ref = _reference(a, texts, 32)
    before = _embeds_answered(ma), _embeds_answered(mb)

    async def run():
        async def source():  # an async iterable, as an asyncio pipeline would feed it
            for t in texts:
                yield t

        async with AsyncClient([a, b], timeout=60) as c:
            return [arr async for arr in c.embed_stream(source(), batch_size=32, streams=4, window=4)]

    parts = asyncio.run(run())
    shares = [_embeds_answered(ma) - before[0], _embeds_answered(mb) - before[1]]
    print(f"\nasync streams=4 over two replicas: messages answered {shares[0]:.0f} / {shares[1]:.0f}")
    assert [len(p) for p in parts] == [32] * 93 + [24]
    np.testing.assert_allclose(np.concatenate(parts), ref, atol=1e-6)
    assert sum(shares) == 94 and min(shares) >= 0.2 * sum(shares)


def test_async_client_streams_survive_a_replica_killed_mid_stream(tiny_models_dir):
    """One of two replicas SIGKILLed while an AsyncClient streams over both: its unanswered batches
    go to the other, and the caller still gets every batch once, in order."""
    import asyncio

    from ember_client import AsyncClient

    first, second = _replica(tiny_models_dir, 0), _replica(tiny_models_dir, 1)
    texts = [f"kill test text {i}" for i in range(6000)]
    try:
        ref = _reference(second[1], texts, 32)

        async def run():
            got = []
            async with AsyncClient([first[1], second[1]], timeout=60) as c:
                async for arr in c.embed_stream(texts, batch_size=32, streams=2, window=4):
                    got.append(arr)
                    if len(got) == 20:
                        first[0].send_signal(signal.SIGKILL)  # mid-stream, without a drain
                return got, c.stream_resumes

        parts, resumes = asyncio.run(run())
        print(f"\nasync streams after a kill: {len(parts)} batches, {resumes} stream resumes")
        assert len(parts) == 188 and resumes >= 1
        np.testing.assert_allclose(np.concatenate(parts), ref, atol=1e-6)
    finally:
        for proc, _, _ in (first, second):
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
