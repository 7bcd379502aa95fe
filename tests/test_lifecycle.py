"""Start-up, readiness, graceful drain and the command line."""
import asyncio
import os
import re
import signal
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ServerThread
from ember.registry import Registry
from ember.settings import Settings
from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc
from ember_client import Client

S, N = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def check(server, name=""):
    return health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(service=name)).status


def test_not_serving_until_warm(tiny_models_dir, monkeypatch):
    loaded, release = threading.Event(), threading.Event()
    real_warm_up = Registry.warm_up

    def held_warm_up(self, model):  # the real warm-up, held until the test lets it go
        loaded.set()
        release.wait(60)
        real_warm_up(self, model)

    monkeypatch.setattr(Registry, "warm_up", held_warm_up)
    s = ServerThread(Settings(host="127.0.0.1", port=0, models_dir=str(tiny_models_dir), models=("tiny-embed",)))
    try:
        assert loaded.wait(60)
        s.call(s.server._update_health())
        assert check(s) == N and check(s, "model/tiny-embed") == N and check(s, "ember.v1.Embedder") == N
        with pytest.raises(grpc.RpcError) as e:
            s.embedder.Embed(pb.EmbedRequest(inputs=["x"]))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in e.value.details()
        release.set()
        s.wait_loaded()
        assert check(s) == S and check(s, "model/tiny-embed") == S
        assert len(s.embedder.Embed(pb.EmbedRequest(inputs=["x"])).embeddings) == 1
    finally:
        release.set()
        s.stop()


def test_drain_finishes_in_flight_work_and_refuses_new(tiny_models_dir):
    # inline_max_tokens=0: the held batch must wait on the inference thread, not on the event loop
    s = ServerThread(Settings(host="127.0.0.1", port=0, models_dir=str(tiny_models_dir), models=("tiny-embed",),
                              inline_max_tokens=0))
    s.wait_loaded()
    engine = s.server.registry.models["tiny-embed"].engine
    entered, release = threading.Event(), threading.Event()
    real_infer = engine.infer

    def held_infer(*a):  # wraps the real engine: holds the batch until the test lets it go
        entered.set()
        release.wait(60)
        return real_infer(*a)

    engine.infer = held_infer
    watch = health_pb2_grpc.HealthStub(s.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == S
    result = {}
    t = threading.Thread(target=lambda: result.update(r=s.embedder.Embed(pb.EmbedRequest(inputs=["a", "b"]))))
    t.start()
    assert entered.wait(30)
    fut = asyncio.run_coroutine_threadsafe(s.server.drain(10), s.loop)
    assert next(watch).status == N  # health goes NOT_SERVING first
    other = grpc.insecure_channel(s.address)
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.EmbedderStub(other).Embed(pb.EmbedRequest(inputs=["new"]), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    release.set()
    t.join(30)
    assert len(result["r"].embeddings) == 2  # the accepted request completed
    fut.result(30)
    other.close()
    s.stop()


def test_sigterm_drains_and_exits(tiny_models_dir):
    env = {**os.environ, "EMBER_LOG_LEVEL": "info"}
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--models-dir", str(tiny_models_dir), "--models", "tiny-embed,tiny-rerank"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port
        # Keep reading the log so the server never blocks on a full pipe.
        tail: list[str] = []
        reader = threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True)
        reader.start()
        with Client(f"127.0.0.1:{port}") as c:
            c.wait_until_serving(timeout=120)
            assert c.embed(["hello"]).shape == (1, 32)
            assert len(c.rerank("q", ["a", "b"])) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(10)
        rest = "".join(tail)
        assert "draining" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("args,env,needle", [
    (["--port", "99999"], {}, "invalid setting port"),
    ([], {"EMBER_MAX_BATCH_TOKENS": "0"}, "invalid setting max_batch_tokens"),
    (["--providers", "cuda,tpu"], {}, "invalid setting providers"),
    (["--models-dir", "/no/such/dir"], {}, "invalid setting models_dir"),
])
def test_invalid_settings_stop_startup_naming_the_setting(args, env, needle):
    out = subprocess.run([sys.executable, "-m", "ember", "serve", *args], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    assert out.returncode == 2 and needle in out.stderr


def test_serve_help_documents_settings():
    out = subprocess.run([sys.executable, "-m", "ember", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag, env in (("--models-dir", "EMBER_MODELS_DIR"), ("--port", "EMBER_PORT"),
                      ("--providers", "EMBER_PROVIDERS"), ("--max-inputs-per-request", "EMBER_MAX_INPUTS_PER_REQUEST")):
        assert flag in out.stdout and env in out.stdout
    # grouped by topic, every setting in a named group (none left to "other")
    from ember.cli import SERVE_GROUPS

    for title in SERVE_GROUPS:
        assert f"\n{title}:\n" in out.stdout
    assert "\nother:\n" not in out.stdout
    import dataclasses

    from ember.settings import Settings

    grouped = [n for names in SERVE_GROUPS.values() for n in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(Settings) if f.metadata.get("cli", True))


def _serve_fails(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert r.returncode == 2 and len(lines) == 1, r.stderr  # one line, no traceback
    assert "Traceback" not in r.stderr and "never awaited" not in r.stderr
    return lines[0]


def test_a_busy_grpc_port_is_one_line_naming_the_setting(tiny_models_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = _one_line(_serve_fails(["--port", str(busy.getsockname()[1]), "--models-dir", str(tiny_models_dir)]))
    assert "cannot listen for gRPC" in line and "--port / EMBER_PORT" in line


def test_a_busy_metrics_port_is_one_line_naming_the_setting(tiny_models_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        line = _one_line(_serve_fails(["--port", "0", "--models-dir", str(tiny_models_dir)],
                                      {"EMBER_METRICS_PORT": str(busy.getsockname()[1])}))
    assert "cannot serve metrics" in line and "--metrics-port / EMBER_METRICS_PORT" in line
    assert "in use" in line


@pytest.mark.parametrize("env,needle", [
    ({"EMBER_PORT": "abc"}, "invalid setting port (--port / EMBER_PORT): 'abc' is not a whole number"),
    ({"EMBER_DRAIN_SECONDS": "soon"}, "invalid setting drain_seconds (--drain-seconds / EMBER_DRAIN_SECONDS)"),
    ({"EMBER_METRICS": "maybe"}, "invalid setting metrics (--metrics / EMBER_METRICS): 'maybe' is not a boolean"),
])
def test_a_bad_environment_value_is_one_line_naming_the_variable(env, needle):
    assert needle in _one_line(_serve_fails([], env))


def test_a_certificate_that_is_not_one_is_one_line_naming_the_setting(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    line = _one_line(_serve_fails(["--port", "0", "--tls-cert", str(bad), "--tls-key", str(bad)]))
    assert "invalid setting tls_cert (--tls-cert / EMBER_TLS_CERT)" in line and "PEM certificate chain" in line


def test_the_default_providers_do_not_warn_on_a_cpu_only_machine_and_named_ones_do(tiny_models_dir, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    for providers, warns in (((), False), (("cuda", "cpu"), True)):
        caplog.clear()
        extra = {"providers": providers} if providers else {}
        s = ServerThread(Settings(host="127.0.0.1", port=0, models_dir=str(tiny_models_dir), models=("tiny-embed",),
                                  **extra))
        s.wait_loaded()
        s.stop()
        missing = [r for r in caplog.records if "requested but not available" in r.getMessage()]
        assert bool(missing) == warns, [r.getMessage() for r in missing]
