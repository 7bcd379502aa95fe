"""Circuit breaker states, and retry-on-CPU through a fault-injection wrapper around the real session."""
import numpy as np
import pytest

from grpc_health.v1 import health_pb2, health_pb2_grpc

from ember.engine import Engine
from ember.fallback import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, FallbackEngine
from ember.manifest import read_manifest


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def health(server, name):
    return health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(service=name)).status


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_breaker_transitions():
    clock = Clock()
    b = CircuitBreaker(threshold=3, recovery_s=300, clock=clock)
    assert b.state == CLOSED and b.allow_primary()
    b.record_failure()
    b.record_failure()
    b.record_success()  # a success resets the consecutive count
    for _ in range(2):
        b.record_failure()
    assert b.state == CLOSED
    b.record_failure()
    assert b.state == OPEN and not b.allow_primary()
    clock.t += 299
    assert not b.allow_primary()
    clock.t += 1
    assert b.allow_primary() and b.state == HALF_OPEN
    assert not b.allow_primary()  # one trial at a time
    b.record_failure()
    assert b.state == OPEN and not b.allow_primary()  # a failed trial opens it again, for a new period
    clock.t += 300
    assert b.allow_primary()
    b.record_success()
    assert b.state == CLOSED and b.allow_primary()
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)


class FaultyEngine:
    """The real engine, failing on command (as a GPU session would with OOM or a driver error)."""

    def __init__(self, real):
        self.real = real
        self.manifest, self.needs_type_ids = real.manifest, real.needs_type_ids
        self.providers, self.unavailable = ["cuda", "cpu"], []
        self.fail = False
        self.calls = 0

    def infer(self, *a):
        self.calls += 1
        if self.fail:
            raise RuntimeError("CUDA error: out of memory (injected)")
        return self.real.infer(*a)


def test_failed_batches_are_retried_on_cpu_and_the_breaker_opens(tiny_models_dir):
    d = tiny_models_dir / "tiny-embed"
    m = read_manifest(d)
    cpu = Engine(d, m, ("cpu",))
    gpu = FaultyEngine(Engine(d, m, ("cpu",)))
    clock = Clock()
    eng = FallbackEngine(gpu, cpu, CircuitBreaker(threshold=3, recovery_s=300, clock=clock))
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    mask = np.ones_like(ids)
    want = cpu.infer(ids, mask, np.zeros_like(ids))

    np.testing.assert_array_equal(eng.infer(ids, mask, np.zeros_like(ids)), want)
    assert not eng.degraded and eng.fallback_batches == 0
    gpu.fail = True
    for _ in range(3):  # each failing batch still answers, from the CPU
        np.testing.assert_array_equal(eng.infer(ids, mask, np.zeros_like(ids)), want)
    assert eng.degraded and eng.breaker.state == OPEN and eng.primary_errors == 3 and gpu.calls == 4
    assert eng.last_switch_s > 0
    eng.infer(ids, mask, np.zeros_like(ids))
    assert gpu.calls == 4 and eng.fallback_batches == 4  # open: the accelerator is not tried
    gpu.fail = False
    clock.t += 300
    np.testing.assert_array_equal(eng.infer(ids, mask, np.zeros_like(ids)), want)  # the half-open trial
    assert gpu.calls == 5 and not eng.degraded


def test_no_client_visible_failure_when_the_accelerator_fails(tiny_models_dir):
    from conftest import start_server
    from ember.v1 import ember_pb2 as pb

    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), breaker_threshold=2)
    try:
        model = s.server.registry.models["tiny-embed"]
        faulty = FaultyEngine(model.engine)
        breaker = CircuitBreaker(threshold=2, recovery_s=300, on_change=s.server.registry._changed)
        eng = FallbackEngine(faulty, model.engine, breaker)
        model.engine = model.scheduler.engine = eng  # the real fallback path, behind the real server
        s.call(s.server._update_health())
        assert health(s, "model/tiny-embed/accelerator") == SERVING
        before = s.embedder.Embed(pb.EmbedRequest(inputs=["hello", "world"]))
        faulty.fail = True
        for _ in range(4):
            during = s.embedder.Embed(pb.EmbedRequest(inputs=["hello", "world"]))
            assert [list(e.values.values) for e in during.embeddings] == \
                [list(e.values.values) for e in before.embeddings]
        info = {m.name: m for m in s.models.ListModels(pb.ListModelsRequest()).models}["tiny-embed"]
        assert info.degraded and info.accelerator_errors == 2 and info.fallback_batches == 4
        s.call(s.server._update_health())  # flush the update the breaker scheduled
        assert health(s, "model/tiny-embed") == SERVING and health(s, "") == SERVING
        assert health(s, "model/tiny-embed/accelerator") == NOT_SERVING
    finally:
        s.stop()


def test_a_run_over_the_gpu_timeout_is_stopped_counted_and_answered_on_cpu(tiny_models_dir):
    """--gpu-timeout-ms: the real ORT run is stopped through RunOptions.terminate (here on a CPU
    session standing in for the accelerator, with a timeout no batch can meet); the batch is
    answered by the CPU session and the switch time is measured."""
    d = tiny_models_dir / "tiny-embed"
    m = read_manifest(d)
    cpu = Engine(d, m, ("cpu",))
    slow = Engine(d, m, ("cpu",), run_timeout_s=1e-6)
    eng = FallbackEngine(slow, cpu, CircuitBreaker(threshold=3, recovery_s=300))
    ids = np.tile(np.array([[101] + [7592] * 60 + [102]], dtype=np.int64), (64, 1))
    mask = np.ones_like(ids)
    with pytest.raises(TimeoutError, match="longer than 0 ms"):
        slow.infer(ids, mask, np.zeros_like(ids))
    np.testing.assert_array_equal(eng.infer(ids, mask, np.zeros_like(ids)), cpu.infer(ids, mask, np.zeros_like(ids)))
    assert eng.primary_errors == 1 and eng.fallback_batches == 1 and eng.primary_batches == 0
    assert 0 < eng.last_switch_s < 5
    print(f"\nGPU-timeout fallback: switch from the stopped run to the CPU answer {eng.last_switch_s * 1000:.2f} ms")
    fast = Engine(d, m, ("cpu",), run_timeout_s=30)  # a generous timeout never fires
    np.testing.assert_array_equal(fast.infer(ids, mask, np.zeros_like(ids)), cpu.infer(ids, mask, np.zeros_like(ids)))


def test_tensorrt_profiles_cover_every_batch_the_scheduler_can_make():
    from ember.engine import accelerator_options, length_buckets, trt_profiles
    from ember.settings import Settings

    assert length_buckets(512) == [16, 32, 64, 128, 256, 512]
    assert length_buckets(8192)[-1] == 8192 and length_buckets(10) == [10]
    names = ["input_ids", "attention_mask"]
    prof = trt_profiles(names, 512, 16384, 128)

    def parse(key):
        out = []
        for item in prof[key].split(","):
            name, dims = item.split(":")
            out.append((name, tuple(int(x) for x in dims.split("x"))))
        return out

    mins, opts, maxs = parse("trt_profile_min_shapes"), parse("trt_profile_opt_shapes"), parse("trt_profile_max_shapes")
    assert len(mins) == len(opts) == len(maxs) == 2 * 6  # one profile per bucket, every input in each
    profiles = [(mins[i][1], opts[i][1], maxs[i][1]) for i in range(0, len(mins), 2)]
    for lo, opt, hi in profiles:
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))
    # every (B, T) the scheduler may run falls in some profile
    for t in range(1, 513):
        for b in (1, 2, 7, 32, 127, 128):
            if b * t <= 16384:
                assert any(lo[0] <= b <= hi[0] and lo[1] <= t <= hi[1] for lo, _, hi in profiles), (b, t)

    s = Settings(device_id=1, gpu_mem_limit_mb=2048, trt_cache_dir="/var/cache/ember-trt", trt_fp16=True)
    o = accelerator_options(s, names, 512, 16384, "bge")
    assert o["cuda"] == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(2 << 30)}
    assert o["tensorrt"]["trt_fp16_enable"] == "True" and o["tensorrt"]["device_id"] == "1"
    trt = o["tensorrt"]
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == "/var/cache/ember-trt/bge"
    assert o["tensorrt"]["trt_profile_max_shapes"] == prof["trt_profile_max_shapes"]


def test_accelerator_options_reach_the_session(tiny_models_dir, monkeypatch):
    """With CUDA faked available, the session is asked for CUDA with ember's options (the fault
    injection records what the real InferenceSession was given), then falls back to the CPU."""
    import onnxruntime as ort

    from conftest import start_server

    seen = {}
    real = ort.InferenceSession

    def recording(path, opts=None, providers=None, provider_options=None, **kw):
        if providers and "CUDAExecutionProvider" in providers:
            seen["providers"], seen["options"] = list(providers), provider_options
            raise RuntimeError("injected: no device")
        return real(path, opts, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", recording)
    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), providers=("cuda", "cpu"),
                     device_id=0, gpu_mem_limit_mb=512)
    try:
        assert seen["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert seen["options"][0]["gpu_mem_limit"] == str(512 << 20) and seen["options"][1] == {}
        assert s.server.registry.models["tiny-embed"].engine.providers == ["cpu"]
    finally:
        s.stop()
