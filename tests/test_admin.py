"""Live model management: load, reload and unload while serving (Admin RPCs and SIGHUP)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import start_server
from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc

ADMIN = (("authorization", "Bearer admin-key"),)


@pytest.fixture
def live_dir(tiny_models_dir, tmp_path):
    """A models directory the test can change: tiny-embed now; `spare` and `tampered` to add later."""
    d = tmp_path / "models"
    d.mkdir()
    shutil.copytree(tiny_models_dir / "tiny-embed", d / "tiny-embed")
    spare = tmp_path / "spare"
    shutil.copytree(tiny_models_dir / "tiny-embed", spare)
    return d, spare, tiny_models_dir / "tampered"


def admin(server) -> pb_grpc.AdminStub:
    return pb_grpc.AdminStub(server.channel)


def assert_admin_guarded(server, other_key: str) -> None:
    """Rescan: UNAUTHENTICATED without a key, PERMISSION_DENIED with other_key, served with ADMIN."""
    for md, code in (((), grpc.StatusCode.UNAUTHENTICATED),
                     ((("authorization", f"Bearer {other_key}"),), grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.RpcError) as e:
            admin(server).Rescan(pb.RescanRequest(), metadata=md)
        assert e.value.code() == code
    assert admin(server).Rescan(pb.RescanRequest(), metadata=ADMIN).loaded == []


@pytest.mark.parametrize("keys", [(), ("data-key",)])
def test_admin_service_needs_an_admin_key(live_dir, keys):
    """Off without admin keys, whether or not the data RPCs have keys (with none, the server has
    no interceptor and the service refuses by itself), for every Admin method."""
    d, _, _ = live_dir
    s = start_server(models_dir=str(d), api_keys=keys)
    try:
        calls = [lambda md: admin(s).Rescan(pb.RescanRequest(), metadata=md),
                 lambda md: admin(s).LoadModel(pb.ModelRequest(name="tiny-embed"), metadata=md)]
        for call in calls:
            for md in (ADMIN, (("authorization", "Bearer data-key"),), None):
                with pytest.raises(grpc.RpcError) as e:
                    call(md)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "--admin-api-keys" in e.value.details()
    finally:
        s.stop()
    s = start_server(models_dir=str(d), api_keys=("data-key",), admin_api_keys=("admin-key",))
    try:
        assert_admin_guarded(s, other_key="data-key")
        # an admin key is also good for the data RPCs
        assert len(s.embedder.Embed(pb.EmbedRequest(inputs=["x"]), metadata=ADMIN).embeddings) == 1
    finally:
        s.stop()


def test_admin_keys_alone_still_guard_the_admin_service(live_dir):
    """Admin keys without data keys: the data RPCs are open, the Admin service is not."""
    d, _, _ = live_dir
    s = start_server(models_dir=str(d), admin_api_keys=("admin-key",))
    try:
        assert_admin_guarded(s, other_key="wrong-key")
        assert len(s.embedder.Embed(pb.EmbedRequest(inputs=["x"])).embeddings) == 1
    finally:
        s.stop()


def test_load_reload_unload_under_load_fail_nothing_in_flight(live_dir):
    d, spare, tampered = live_dir
    s = start_server(models_dir=str(d), default_embed_model="tiny-embed", admin_api_keys=("admin-key",))
    stop = threading.Event()
    outcomes: dict[str, list] = {"tiny-embed": [], "dyn": []}
    phase = ["before"]

    def traffic(model: str):
        stub = pb_grpc.EmbedderStub(grpc.insecure_channel(s.address))
        i = 0
        while not stop.is_set():
            try:
                r = stub.Embed(pb.EmbedRequest(model=model, inputs=[f"{model} {i}", "two"]), timeout=30)
                outcomes[model].append((phase[0], "OK" if len(r.embeddings) == 2 else "WRONG"))
            except grpc.RpcError as e:
                outcomes[model].append((phase[0], e.code().name, e.details()))
            i += 1

    health = health_pb2_grpc.HealthStub(s.channel)
    threads = [threading.Thread(target=traffic, args=("tiny-embed",), daemon=True) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        shutil.copytree(spare, d / "dyn")
        info = admin(s).LoadModel(pb.ModelRequest(name="dyn"), metadata=ADMIN)
        assert info.model.name == "dyn" and info.model.ready
        assert health.Check(health_pb2.HealthCheckRequest(service="model/dyn")).status == 1
        phase[0] = "loaded"
        dyn = [threading.Thread(target=traffic, args=("dyn",), daemon=True) for _ in range(3)]
        threads += dyn
        for t in dyn:
            t.start()
        time.sleep(1.0)
        for _ in range(3):
            admin(s).ReloadModel(pb.ModelRequest(name="dyn"), metadata=ADMIN)
            time.sleep(0.3)
        phase[0] = "unloading"
        admin(s).UnloadModel(pb.ModelRequest(name="dyn"), metadata=ADMIN)
        phase[0] = "unloaded"
        time.sleep(0.5)
        assert health.Check(health_pb2.HealthCheckRequest(service="model/dyn")).status == 2
        # a tampered model is refused with the reason; everything else keeps serving
        shutil.copytree(tampered, d / "bad")
        with pytest.raises(grpc.RpcError) as e:
            admin(s).LoadModel(pb.ModelRequest(name="bad"), metadata=ADMIN)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "checksum mismatch" in e.value.details()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        s.stop()
    strange = [o for o in outcomes["dyn"] + outcomes["tiny-embed"] if o[1] not in ("OK", "NOT_FOUND")]
    assert not strange, strange[:5]
    outcomes = {k: [(o[0], o[1]) for o in v] for k, v in outcomes.items()}
    base = [c for _, c in outcomes["tiny-embed"]]
    assert base and set(base) == {"OK"}  # the model that stayed: not one failure
    dyn_ok = [c for p, c in outcomes["dyn"] if p == "loaded"]
    assert dyn_ok and set(dyn_ok) == {"OK"}  # three reloads under load: not one failure
    late = {c for p, c in outcomes["dyn"] if p in ("unloading", "unloaded")}
    assert late <= {"OK", "NOT_FOUND"}  # in flight: answered; after the unload: NOT_FOUND
    print(f"\nlive models: {len(base)} requests on the steady model, {len(dyn_ok)} on the reloaded one, "
          "zero failures")


def test_a_model_too_big_for_the_memory_left_is_refused_and_the_rest_keeps_serving(live_dir, monkeypatch):
    """Loading it would get the whole process OOM-killed: it is refused with the sizes instead."""
    from ember import registry

    d, spare, _ = live_dir
    shutil.copytree(spare, d / "big")
    s = start_server(models_dir=str(d), models=("tiny-embed",), admin_api_keys=("admin-key",))
    try:
        monkeypatch.setattr(registry, "memory_available", lambda: 1024)  # less than the tiny graph
        with pytest.raises(grpc.RpcError) as e:
            admin(s).LoadModel(pb.ModelRequest(name="big"), metadata=ADMIN)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'big'" in e.value.details() and "memory is available" in e.value.details(), e.value.details()
        embedder = pb_grpc.EmbedderStub(s.channel)
        assert len(embedder.Embed(pb.EmbedRequest(inputs=["still served"], model="tiny-embed")).embeddings) == 1
        monkeypatch.setattr(registry, "memory_available", lambda: 1 << 40)
        assert admin(s).LoadModel(pb.ModelRequest(name="big"), metadata=ADMIN).model.ready
        assert len(embedder.Embed(pb.EmbedRequest(inputs=["now loaded"], model="big")).embeddings) == 1
    finally:
        s.stop()


@pytest.mark.parametrize("name", ["../tiny-embed", "a/b", "", ".hidden", "x" * 200])
def test_model_names_cannot_escape_the_models_directory(live_dir, name):
    d, _, _ = live_dir
    s = start_server(models_dir=str(d), admin_api_keys=("admin-key",))
    try:
        with pytest.raises(grpc.RpcError) as e:
            admin(s).LoadModel(pb.ModelRequest(name=name), metadata=ADMIN)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in e.value.details()
    finally:
        s.stop()


def test_a_symlink_out_of_the_models_directory_is_refused(live_dir, tmp_path):
    d, spare, _ = live_dir
    os.symlink(spare, d / "sneaky")
    s = start_server(models_dir=str(d), models=("tiny-embed",), admin_api_keys=("admin-key",))
    try:
        with pytest.raises(grpc.RpcError) as e:
            admin(s).LoadModel(pb.ModelRequest(name="sneaky"), metadata=ADMIN)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside the models directory" in \
            e.value.details()
    finally:
        s.stop()


def test_sighup_rescans_the_models_directory(live_dir):
    d, spare, _ = live_dir
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--models-dir", str(d), "--log-level", "info"], stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            if "listening on" in line:
                port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
            if "ready" in line:
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        models = pb_grpc.ModelsStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

        def names():
            return sorted(m.name for m in models.ListModels(pb.ListModelsRequest()).models)

        assert names() == ["tiny-embed"]
        shutil.copytree(spare, d / "added")
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 60
        while names() != ["added", "tiny-embed"] and time.monotonic() < end:
            time.sleep(0.1)
        assert names() == ["added", "tiny-embed"]
        shutil.rmtree(d / "tiny-embed")
        proc.send_signal(signal.SIGHUP)
        while names() != ["added"] and time.monotonic() < end:
            time.sleep(0.1)
        assert names() == ["added"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_corrupt_admin_request_is_invalid_argument_naming_the_message(live_dir):
    d, _, _ = live_dir
    s = start_server(models_dir=str(d), admin_api_keys=("admin-key",))
    try:
        for method in ("LoadModel", "ReloadModel", "UnloadModel", "Rescan"):
            call = s.channel.unary_unary(f"/ember.v1.Admin/{method}", request_serializer=None,
                                         response_deserializer=None)
            with pytest.raises(grpc.RpcError) as e:
                call(b"\xff\xff\xff", metadata=ADMIN, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "request" in e.value.details() and "not a valid ember.v1." in e.value.details()
    finally:
        s.stop()
