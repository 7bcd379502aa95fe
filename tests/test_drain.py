"""Drain and rollout as Kubernetes and real clients see them: grpc_health_probe polling through a
SIGTERM under load, a stream held open across it, and a rolling restart under a running stream.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import ServerThread, free_port
from ember.servicers import DRAINED
from ember.settings import Settings
from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc
from ember_client import Client
from test_clients import PROBE, probe
from test_reliability import _load_workers, _serve, _wait_serving
from test_streams import Interactive


def _probe_loop(address: str, out: list, stop: threading.Event) -> threading.Thread:
    """grpc_health_probe run back to back (every ~20 ms), as a readiness check or a load balancer
    polls: (monotonic time, exit code) of each run."""
    def loop():
        while not stop.is_set():
            r = probe(f"-addr={address}", "-connect-timeout=500ms", "-rpc-timeout=500ms")
            out.append((time.monotonic(), r.returncode))
            time.sleep(0.02)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_sigterm_under_load_probe_sees_not_serving_first_and_a_held_stream_gets_every_answer(tiny_models_dir):
    if not PROBE.is_file():
        probe()  # fails in CI, skips elsewhere, with the reason
    port = free_port()
    address = f"127.0.0.1:{port}"
    delay = 1.5
    proc = _serve(tiny_models_dir, port, "--drain-delay-seconds", str(delay), "--drain-seconds", "10")
    probes: list = []
    results: list = []
    stop, stop_probes = threading.Event(), threading.Event()
    try:
        _wait_serving(address)
        prober = _probe_loop(address, probes, stop_probes)
        workers = _load_workers(address, results, stop, n=4)
        channel = grpc.insecure_channel(address)
        held = Interactive(pb_grpc.EmbedderStub(channel).EmbedStream)
        for r in range(5):
            assert held.round_trip(pb.EmbedRequest(inputs=[f"before {r}"], request_id=f"b{r}")).request_id == f"b{r}"
        # a unary call in flight at SIGTERM: big enough to take a while on the tiny model
        big: dict = {}
        call = threading.Thread(target=lambda: big.update(r=pb_grpc.EmbedderStub(channel).Embed(
            pb.EmbedRequest(inputs=["x " * 60] * 1024), timeout=60)))
        call.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # During the drain delay the server still serves, the held stream included.
        time.sleep(delay / 3)
        for r in range(3):
            assert held.round_trip(pb.EmbedRequest(inputs=[f"during {r}"], request_id=f"d{r}")).request_id == f"d{r}"
        # Three more sent without waiting: each is answered before the stream ends.
        for r in range(3):
            held.outbox.put(pb.EmbedRequest(inputs=[f"last {r}"], request_id=f"l{r}"))
        assert proc.wait(30) == 0
        exit_s = time.monotonic() - t0
        call.join(30)
        tail = [held.answers.get(timeout=10) for _ in range(4)]
        time.sleep(0.3)
        stop.set()
        stop_probes.set()
        for w in workers:
            w.join(30)
        prober.join(10)
        channel.close()
    finally:
        stop.set()
        stop_probes.set()
        if proc.poll() is None:
            proc.kill()
    after = [code for t, code in probes if t >= t0]
    first_down = next(i for i, c in enumerate(after) if c != 0)
    print(f"\nSIGTERM with a {delay}s drain delay: exit after {exit_s:.2f}s; probe exit codes after SIGTERM: "
          f"{after[:first_down].count(0)} x 0, then {_runs(after[first_down:])}; load: "
          f"{sum(c == 'ok' for c, _ in results)} ok of {len(results)}")
    assert all(code == 0 for t, code in probes if t < t0)
    assert after[first_down] == 4 and 4 in after and 2 in after and after.index(4) < after.index(2)
    assert set(after) <= {0, 2, 3, 4} and 0 not in after[first_down:]  # once down, never SERVING again
    # NOT_SERVING for the whole delay: at least most of it, at ~20-50 ms a probe
    assert after.count(4) >= 5
    assert len(big["r"].embeddings) == 1024  # the unary call in flight at SIGTERM completed
    assert [getattr(a, "request_id", None) for a in tail[:3]] == ["l0", "l1", "l2"]
    end = tail[3]
    assert isinstance(end, grpc.RpcError) and end.code() == grpc.StatusCode.UNAVAILABLE and end.details() == DRAINED
    assert {c for c, _ in results} <= {"ok", "UNAVAILABLE", "CANCELLED"}
    assert all(n == 8 for c, n in results if c == "ok")
    assert delay <= exit_s < delay + 10


def _runs(codes: list[int]) -> str:
    out: list[list[int]] = []
    for c in codes:
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return ", ".join(f"{n} x {c}" for c, n in out)


def test_streams_in_flight_at_the_drain_get_their_answers_then_unavailable(tiny_models_dir):
    """Messages read before the drain but still being computed are answered; then the stream ends
    with UNAVAILABLE and DRAINED, which tells the client to reconnect (held on the engine, so the
    drain starts while they are in flight)."""
    s = ServerThread(Settings(host="127.0.0.1", port=0, models_dir=str(tiny_models_dir), models=("tiny-embed",),
                              inline_max_tokens=0))
    s.wait_loaded()
    model = s.server.registry.models["tiny-embed"]
    entered, release = threading.Event(), threading.Event()

    def held(real_infer):
        def held_infer(*a):  # the real engine, held until the test lets it go
            entered.set()
            release.wait(60)
            return real_infer(*a)
        return held_infer

    for engine in {id(e): e for e in (model.engine, *model.scheduler.lanes)}.values():  # main session and lanes
        engine.infer = held(engine.infer)
    embed = Interactive(s.embedder.EmbedStream)
    rerank_idle = Interactive(s.reranker.RerankStream)  # open, nothing in flight
    for r in range(3):
        embed.outbox.put(pb.EmbedRequest(inputs=[f"in flight {r}"], request_id=str(r)))
    assert entered.wait(30)
    time.sleep(0.2)  # the three are read and queued
    fut = asyncio.run_coroutine_threadsafe(s.server.drain(10), s.loop)
    time.sleep(0.3)
    release.set()
    got = [embed.answers.get(timeout=30) for _ in range(4)]
    idle_end = rerank_idle.answers.get(timeout=30)
    fut.result(30)
    s.stop()
    assert [g.request_id for g in got[:3]] == ["0", "1", "2"]
    for end in (got[3], idle_end):
        assert isinstance(end, grpc.RpcError) and end.code() == grpc.StatusCode.UNAVAILABLE
        assert end.details() == DRAINED


def test_rolling_restart_under_a_stream_loses_and_repeats_nothing(tiny_models_dir):
    """Two `ember serve` replicas behind one client; an embed_stream of 50,000 texts while each
    replica in turn is SIGTERMed and started again: every text answered once, in order, equal to a
    clean run."""
    texts = [f"rolling restart text {i} with some words" for i in range(50_000)]
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    drain = ("--drain-delay-seconds", "0.5", "--drain-seconds", "10")
    procs = [_serve(tiny_models_dir, p, *drain) for p in ports]
    restarts: list[str] = []
    try:
        for a in addresses:
            _wait_serving(a)
        with Client(addresses[0]) as c:
            clean = np.concatenate(list(c.embed_stream(texts, batch_size=64)))
        got: list[np.ndarray] = []
        answered = threading.Event()

        def roll():
            answered.wait(60)
            for k, port in enumerate(ports):
                procs[k].send_signal(signal.SIGTERM)
                procs[k].wait(30)
                procs[k] = _serve(tiny_models_dir, port, *drain)
                _wait_serving(addresses[k])
                restarts.append(addresses[k])

        roller = threading.Thread(target=roll, daemon=True)
        roller.start()
        with Client(addresses, retries=8) as c:
            for arr in c.embed_stream(texts, batch_size=64):
                got.append(arr)
                if len(got) == 20:
                    answered.set()
                if len(restarts) < 2:
                    time.sleep(0.01)  # a consumer slower than the stream: it runs through both restarts
            resumes = c.stream_resumes
        roller.join(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    out = np.concatenate(got)
    print(f"\nrolling restart: {len(out)} vectors for {len(texts)} texts; {len(restarts)} replicas restarted; the "
          f"stream was resumed {resumes} time(s)")
    assert restarts == addresses and resumes >= 1
    assert out.shape == clean.shape
    np.testing.assert_allclose(out, clean, atol=1e-6)


@pytest.mark.parametrize("admin", [False, True])
def test_health_list_answers_every_status_and_admin_has_an_entry_only_when_on(tiny_models_dir, admin):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    extra = {"admin_api_keys": ("adm",)} if admin else {}
    s = ServerThread(Settings(host="127.0.0.1", port=0, models_dir=str(tiny_models_dir),
                              models=("tiny-embed", "tiny-rerank"), **extra))
    s.wait_loaded()
    try:
        stub = health_pb2_grpc.HealthStub(s.channel)
        statuses = {k: v.status for k, v in stub.List(health_pb2.HealthListRequest(), timeout=10).statuses.items()}
        serving = health_pb2.HealthCheckResponse.SERVING
        expected = {"", "ember.v1.Embedder", "ember.v1.Reranker", "ember.v1.Models", "model/tiny-embed",
                    "model/tiny-rerank"} | ({"ember.v1.Admin"} if admin else set())
        assert set(statuses) == expected and set(statuses.values()) == {serving}
        if not admin:
            with pytest.raises(grpc.RpcError) as e:
                stub.Check(health_pb2.HealthCheckRequest(service="ember.v1.Admin"), timeout=10)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        s.stop()
