"""The benchmark helpers that decide what an arm runs: a wrong parse measures the wrong thing."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import ab  # noqa: E402
import call_split  # noqa: E402
import floor_server  # noqa: E402
import sched_trace  # noqa: E402
import soak  # noqa: E402


def test_floor_arm_reads_leading_assignments_as_the_environment_like_a_shell():
    assert call_split.floor_arm("GRPC_EXPERIMENTS=-a,-b B_2='x y' --fixed --ort-config k=v") == (
        ("--fixed", "--ort-config", "k=v"), {"GRPC_EXPERIMENTS": "-a,-b", "B_2": "x y"})
    # an option's own KEY=VALUE argument is not an assignment: only words before the first option are
    assert call_split.floor_arm("--ort-config session.force_spinning_stop=1") == (
        ("--ort-config", "session.force_spinning_stop=1"), {})
    assert call_split.floor_arm("A=1") == ((), {"A": "1"})
    assert call_split.floor_arm("") == ((), {})
    assert call_split.floor_arm("1A=x --fixed") == (("1A=x", "--fixed"), {})  # not a variable name


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
    """front_end.py --grpclib compares the two stacks around one handler: both must really serve it."""
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
TIMEHIST = """
           time    cpu  task name                       wait time  sch delay   run time
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------
   10.000100 [0000]  python[100]                                                    awakened: ember-latency[201/200]
   10.000110 [0000]  python[100]                       0.004      0.000      4.000
   10.000130 [0000]  ember-latency[201/200]            4.300      0.020      0.010
   10.000150 [0000]  ember-latency[201/200]                                         awakened: event_engine[103/100]
   10.000160 [0001]  event_engine[103/100]             4.500      0.030      0.012
   10.000170 [0001]  kworker/1:0-eve[9]                0.100      0.001      0.002
   10.000200 [0000]  <idle>                            0.010      0.000      0.050
   10.006000 [0000]  python[100]                       0.004      0.000      5.000
"""


def test_sched_trace_counts_each_threads_cpu_and_the_wakeups_between_processes_inside_the_window():
    switches, wakes = sched_trace.parse_timehist(TIMEHIST)
    assert [(s["comm"], s["tid"], s["pid"]) for s in switches][:3] == [
        ("python", 100, 100), ("ember-latency", 201, 200), ("event_engine", 103, 100)]
    assert wakes == [{"t": 10.0001, "tid": 100, "pid": 100, "woken_tid": 201, "woken_pid": 200},
                     {"t": 10.00015, "tid": 201, "pid": 200, "woken_tid": 103, "woken_pid": 100}]
    # two calls in a window that starts 1 ms in: the main thread's first 4 ms run counts for its last
    # 0.12 ms, its second run for what falls before the window's end; other processes are left out
    res = sched_trace.summarize(switches, wakes, (9.99999, 10.0055), 2, {100: "server", 200: "client"})
    rows = {r["tid"]: r for r in res["threads"]}
    assert set(rows) == {100, 103, 201}
    assert rows[100]["thread"] == "python (main)" and rows[100]["switches_per_call"] == 1.0
    assert abs(rows[100]["cpu_us_per_call"] - (120 + 4500) / 2) < 1e-6
    assert abs(rows[201]["cpu_us_per_call"] - 5) < 1e-6 and abs(rows[201]["mean_wait_for_core_us"] - 20) < 1e-6
    assert res["wakeups_per_call"] == {"client → server": 0.5, "server → client": 0.5}
    assert abs(res["cpu_us_per_call"]["server"] - (2310 + 6)) < 1e-6


def test_sched_trace_takes_only_name_value_words_for_the_client():
    assert sched_trace.client_env(["GOMAXPROCS=1", "GODEBUG=x=1"]) == {"GOMAXPROCS": "1", "GODEBUG": "x=1"}
    try:
        sched_trace.client_env(["--x"])
    except SystemExit as e:
        assert "--x" in str(e)
    else:
        raise AssertionError("a word that is no NAME=VALUE was taken")
