"""The benchmark helpers that decide what an arm runs: a wrong parse measures the wrong thing."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ab  # noqa: E402
import floor_server  # noqa: E402
import soak  # noqa: E402


def test_ab_arm_reads_revision_then_environment_then_serve_options():
    assert ab.parse_arm("@c5dee02 EMBER_X=1 Y='a b' --no-metrics --pin-threads off") == (
        "c5dee02", ["--no-metrics", "--pin-threads", "off"], {"EMBER_X": "1", "Y": "a b"})
    assert ab.parse_arm("GRPC_TRACE=http --no-metrics") == ("", ["--no-metrics"], {"GRPC_TRACE": "http"})
    assert ab.parse_arm("@HEAD~1") == ("HEAD~1", [], {})
    assert ab.parse_arm("") == ("", [], {})
    assert ab.parse_arm("--ort-config a=b") == ("", ["--ort-config", "a=b"], {})


def test_floor_grpc_args_are_ints_where_they_read_as_ints():
    assert floor_server.grpc_option("grpc.http2.bdp_probe=0") == ("grpc.http2.bdp_probe", 0)
    assert floor_server.grpc_option("grpc.http2.min_ping_interval_without_data_ms=-1") == (
        "grpc.http2.min_ping_interval_without_data_ms", -1)
    assert floor_server.grpc_option("grpc.primary_user_agent=x=1") == ("grpc.primary_user_agent", "x=1")


def test_soak_counts_a_bad_request_answered_ok_as_unexpected():
    counts = {"bad:OK": 1, "bad:INVALID_ARGUMENT": 5, "bad:NOT_FOUND": 2, "embed:OK": 9, "embed:INTERNAL": 1,
              "stream:RESOURCE_EXHAUSTED": 3, "cancel:CANCELLED": 4, "deadline:OK": 1, "garbage:INVALID_ARGUMENT": 2}
    assert soak.unexpected_answers(counts) == {"bad:OK": 1, "embed:INTERNAL": 1, "deadline:OK": 1}


def test_floor_server_answers_the_same_on_grpclib_as_on_grpc_aio(tiny_models_dir):
    """floor_server.py --grpclib serves the floor's handler on grpclib: both stacks must really serve it."""
    import grpc
    import numpy as np
    from bench import FloorProcess, _req
    from conftest import free_port

    from ember.v1 import ember_pb2_grpc as pb_grpc

    vectors = []
    for extra in ((), ("--grpclib",)):
        server = FloorProcess(tiny_models_dir / "tiny-embed", free_port(), extra)
        try:
            with grpc.insecure_channel(server.address) as channel:
                response = pb_grpc.EmbedderStub(channel).Embed(_req(["a text for the floor"]), timeout=30)
            vectors.append(np.array([e.values.values for e in response.embeddings], dtype=np.float32))
        finally:
            server.stop()
    assert vectors[0].shape == (1, 32)
    np.testing.assert_allclose(vectors[1], vectors[0], rtol=0, atol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)


def test_overhead_split_times_each_function_of_a_real_embed_call_and_puts_them_back(tiny_server):
    """overhead.py --split wraps ember's functions by name: a rename must fail here, not leave a
    benchmark that times nothing."""
    from overhead import Stamps

    from ember import servicers
    from ember.v1 import ember_pb2 as pb

    model = tiny_server.server.registry.models["tiny-embed"]
    before = servicers.embed_params
    stamps = Stamps()
    stamps.install(tiny_server.server, model)
    try:
        assert servicers.embed_params is not before
        stamps.on = True
        tiny_server.embedder.Embed(pb.EmbedRequest(model="tiny-embed", inputs=["one text"]), timeout=30)
        stamps.on = False
    finally:
        stamps.remove()
    calls = {label: len(ns) for label, ns in stamps.ns.items()}
    for label in ("embed_params", "registry.get", "tokenizer.encode", "engine._run (the ORT run)",
                  "engine._post (pooling)", "wire.embed_response"):
        assert calls[label] == 1, calls
    assert servicers.embed_params is before
    assert "encode" not in vars(model.tokenizer) and "_run" not in vars(model.engine)


# perf sched timehist -w lines as perf 6.x prints them (from a recording of ember and the Go client)


def test_attention_kernels_builds_each_kernel_and_they_agree_with_the_plain_graph():
    """attention_kernels.py's graphs are what its table says: each fused kernel gives the plain
    layer's output (the flash path, which takes no mask, must not for a windowed one)."""
    import numpy as np

    import attention_kernels as ak

    for shape, kernels in ak.KERNELS.items():
        length = 512  # longer than EmbeddingGemma's window, which the flash path cannot apply
        for kernel in kernels:
            ak.one(shape, kernel, length, 1)
        ref = np.load(ak.OUT / f"attention-{shape}-{length}-plain.npy")
        for kernel in kernels:
            got = np.load(ak.OUT / f"attention-{shape}-{length}-{kernel}.npy")
            assert np.allclose(got, ref, atol=1e-5) == (kernel != "mha_flash"), (shape, kernel)
