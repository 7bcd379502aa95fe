"""Overload with deadlines, with default settings: a burst of clients far beyond what the server
finishes in their deadline. ember must finish whole requests (not spread the work over all of
them and miss every deadline), refuse at once what its backlog cannot finish in time, and keep
REALTIME single texts moving meanwhile.
"""
from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np

from conftest import free_port, real_texts
from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc
from test_reliability import _wait_serving

CLIENTS, PER_REQUEST, DEADLINE = 64, 256, 5.0
SINGLE_DEADLINE = 1.0  # the interactive caller's deadline (a search box's); see docs/operations.md


async def _burst(address: str, texts: list[str]) -> dict:
    out: dict = {"calls": [], "singles": []}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        done = asyncio.Event()

        async def client(k: int):
            t0 = time.monotonic()
            try:
                r = await stub.Embed(pb.EmbedRequest(inputs=texts, request_id=f"c{k}"), timeout=DEADLINE)
                out["calls"].append(("OK", time.monotonic() - t0, len(r.embeddings)))
            except grpc.aio.AioRpcError as e:
                out["calls"].append((e.code().name, time.monotonic() - t0, 0))

        async def singles():
            i = 0
            while not done.is_set():
                t0 = time.monotonic()
                try:
                    await stub.Embed(pb.EmbedRequest(inputs=[f"a single query {i}"]), timeout=SINGLE_DEADLINE)
                    out["singles"].append(("OK", time.monotonic() - t0))
                except grpc.aio.AioRpcError as e:
                    out["singles"].append((e.code().name, time.monotonic() - t0))
                i += 1
                await asyncio.sleep(0.05)

        side = asyncio.ensure_future(singles())
        await asyncio.sleep(0.2)
        await asyncio.gather(*(client(k) for k in range(CLIENTS)))
        done.set()
        await side
    return out


def test_a_burst_with_deadlines_gets_goodput_refusals_at_once_and_realtime_keeps_moving(minilm_server):
    # `ember serve` with default settings, in a process of its own as in production (in this
    # process it would share the GIL with the 64 clients), on the embedded model's export
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--cache-dir", minilm_server.settings.cache_dir, "--log-level", "error"])
    short = real_texts(n_short=5 * PER_REQUEST, n_long=0)
    texts = [" ".join(short[i:i + 5]) for i in range(0, 5 * PER_REQUEST, 5)]  # ~60-120 tokens each
    try:
        _wait_serving(address)
        channel = grpc.insecure_channel(address)
        alone = []
        for _ in range(3):  # one client's request alone: what the server does per second
            t0 = time.monotonic()
            pb_grpc.EmbedderStub(channel).Embed(pb.EmbedRequest(inputs=texts), timeout=60)
            alone.append(time.monotonic() - t0)
        channel.close()
        t_alone = statistics.median(alone)
        capacity = PER_REQUEST * DEADLINE / t_alone  # texts the server finishes in one deadline, alone
        out = asyncio.run(_burst(address, texts))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    calls, singles = out["calls"], out["singles"]
    codes = [c for c, _, _ in calls]
    ok_texts = sum(n for _, _, n in calls)
    refused = [t for c, t, _ in calls if c == "RESOURCE_EXHAUSTED"]
    single_ok = sorted(t for c, t in singles if c == "OK")
    p99 = float(np.percentile(single_ok, 99)) if single_ok else float("nan")
    print(f"\noverload: one request of {PER_REQUEST} texts alone {t_alone * 1e3:.0f} ms, so ~{capacity:.0f} texts "
          f"per {DEADLINE:g}s; burst of {CLIENTS} x {PER_REQUEST} with a {DEADLINE:g}s deadline: "
          f"{codes.count('OK')} OK ({ok_texts} texts, {ok_texts / capacity:.0%} of capacity), "
          f"{len(refused)} RESOURCE_EXHAUSTED (slowest refusal {max(refused, default=0) * 1e3:.0f} ms), "
          f"{codes.count('DEADLINE_EXCEEDED')} DEADLINE_EXCEEDED; REALTIME singles meanwhile: {len(single_ok)} of "
          f"{len(singles)} OK, p50 {np.percentile(single_ok, 50) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
    assert all(n == PER_REQUEST for c, _, n in calls if c == "OK")
    assert ok_texts >= 0.5 * capacity  # goodput: at least half of what the server does alone in 5 s
    assert all(t <= 1.0 for t in refused)  # refused at once, not after waiting out the deadline
    # Single texts sent during the burst: every one answered within its deadline.
    assert {c for c, _ in singles} == {"OK"} and len(singles) >= 10
