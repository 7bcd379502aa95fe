"""What an operator relies on: metrics after known traffic, API keys, TLS and mutual TLS, limits."""
from __future__ import annotations

import datetime
import re
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import start_server
from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc


def scrape(server) -> str:
    port = server.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def value(text: str, name: str, **labels) -> float:
    """The sample `name{labels}` of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- metrics ------------------------------------------------------------------------------
def test_metrics_count_known_traffic(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), default_embed_model="tiny-embed")
    try:
        before = scrape(s)
        for _ in range(3):
            s.embedder.Embed(pb.EmbedRequest(inputs=["one text", "and another"]))
        s.reranker.Rerank(pb.RerankRequest(query="q", documents=["a", "b", "c"]))
        with pytest.raises(grpc.RpcError):
            s.embedder.Embed(pb.EmbedRequest(inputs=[]))
        m = scrape(s)
    finally:
        s.stop()
    assert value(before, "ember_requests_total", rpc="Embed", model="tiny-embed", code="OK") == 0
    assert value(m, "ember_requests_total", rpc="Embed", model="tiny-embed", code="OK") == 3
    assert value(m, "ember_requests_total", rpc="Rerank", model="tiny-rerank", code="OK") == 1
    assert value(m, "ember_requests_total", rpc="Embed", model="", code="INVALID_ARGUMENT") == 1
    assert value(m, "ember_request_duration_seconds_count", rpc="Embed") >= 4
    tokens = value(m, "ember_input_tokens_total", model="tiny-embed")
    assert tokens == 3 * (4 + 4)  # "[CLS] one text [SEP]" and "[CLS] and another [SEP]", three times
    assert value(m, "ember_batch_size_count", model="tiny-embed") >= 3
    assert value(m, "ember_batch_tokens_sum", model="tiny-embed") >= 24
    assert value(m, "ember_inference_duration_seconds_count", model="tiny-rerank") >= 1
    assert value(m, "ember_tokenize_duration_seconds_count", model="tiny-embed") == 3
    assert value(m, "ember_queue_depth", model="tiny-embed") == 0
    assert value(m, "ember_model_ready", model="tiny-embed") == 1
    assert value(m, "ember_provider_active", model="tiny-embed", provider="cpu") == 1
    assert value(m, "ember_model_load_seconds", model="tiny-embed") > 0
    assert value(m, "ember_model_load_errors", model="tampered") == 1


def test_expired_deadlines_never_reach_inference_and_are_counted(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), inline_max_tokens=0,
                     inference_workers=1)  # one worker: held, it keeps the rest queued
    sched = s.server.registry.models["tiny-embed"].scheduler
    real, ran = sched.engine, []

    class Held:  # the real engine, holding the first batch so the next requests wait in the queue
        manifest, needs_type_ids = real.manifest, real.needs_type_ids

        def __init__(self):
            import threading
            self.release = threading.Event()

        def infer(self, ids, mask, type_ids):
            ran.append(ids.shape[0])
            self.release.wait(30)
            return real.infer(ids, mask, type_ids)

    held = Held()
    sched.engine = held
    try:
        import threading
        first = threading.Thread(target=lambda: s.embedder.Embed(pb.EmbedRequest(inputs=["first"])))
        first.start()
        while not ran:
            pass
        codes = []
        for _ in range(3):
            try:
                s.embedder.Embed(pb.EmbedRequest(inputs=["late", "later", "latest"]), timeout=0.2)
            except grpc.RpcError as e:
                codes.append(e.code())
        # The server's deadline is the client's plus the transit time: the client gives up a little
        # before the server's copy of the deadline passes. Let it pass before the queue moves, or the
        # last request's items are seen as cancelled-but-not-yet-expired (counted as cancelled).
        time.sleep(0.1)
        held.release.set()
        first.join(30)
        s.embedder.Embed(pb.EmbedRequest(inputs=["after"]))  # the queue moves on
        m = scrape(s)
    finally:
        sched.engine = real
        s.stop()
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
    assert ran == [1, 1]  # "first" and "after": none of the 9 expired items ran
    assert value(m, "ember_deadline_dropped_total", model="tiny-embed") == 9


def test_metrics_can_be_switched_off(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), metrics=False)
    try:
        assert s.server.metrics is None and s.server.metrics_port == 0
        assert len(s.embedder.Embed(pb.EmbedRequest(inputs=["x"])).embeddings) == 1
    finally:
        s.stop()


# ---- API keys -----------------------------------------------------------------------------
def test_api_keys(tiny_models_dir, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nkey-from-file\n")
    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), api_keys=("key-one",),
                     api_keys_file=str(keys))
    try:
        req = pb.EmbedRequest(inputs=["x"])
        for md in ((("authorization", "Bearer key-one"),), (("authorization", "bearer key-from-file"),)):
            assert len(s.embedder.Embed(req, metadata=md).embeddings) == 1
        cases = [((), grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
                 ((("authorization", "key-one"),), grpc.StatusCode.UNAUTHENTICATED, "Bearer <key>"),
                 ((("authorization", "Bearer nope"),), grpc.StatusCode.PERMISSION_DENIED, "not valid")]
        for md, code, text in cases:
            with pytest.raises(grpc.RpcError) as e:
                s.embedder.Embed(req, metadata=md)
            assert e.value.code() == code and text in e.value.details()
        # streams and the other services too
        with pytest.raises(grpc.RpcError) as e:
            list(s.embedder.EmbedStream(iter([req])))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            s.models.ListModels(pb.ListModelsRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # health (Kubernetes probes) and reflection need no key
        health = health_pb2_grpc.HealthStub(s.channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        refl = reflection_pb2_grpc.ServerReflectionStub(s.channel)
        answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert any(sv.name == "ember.v1.Embedder" for sv in answer.list_services_response.service)
    finally:
        s.stop()


# ---- TLS ----------------------------------------------------------------------------------
def _cert(name: str, issuer=None, ca: bool = False, san: str | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer_cert.subject if issuer_cert else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256()), key


def _pem(cert=None, key=None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if cert is not None:
        return cert.public_bytes(serialization.Encoding.PEM)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = _cert("ember test CA", ca=True)
    server = _cert("localhost", issuer=ca, san="localhost")
    client = _cert("a client", issuer=ca)
    files = {}
    for name, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        (d / f"{name}.crt").write_bytes(_pem(cert=cert))
        (d / f"{name}.key").write_bytes(_pem(key=key))
        files[name] = (d / f"{name}.crt", d / f"{name}.key")
    return files


def _secure_stub(port: int, pki, client_cert: bool):
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"][0].read_bytes(),
        private_key=pki["client"][1].read_bytes() if client_cert else None,
        certificate_chain=pki["client"][0].read_bytes() if client_cert else None)
    ch = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])
    return ch, pb_grpc.EmbedderStub(ch)


def test_tls(tiny_models_dir, pki):
    s = _tls_server(tiny_models_dir, pki, mutual=False)
    try:
        ch, stub = _secure_stub(s.port, pki, client_cert=False)
        assert len(stub.Embed(pb.EmbedRequest(inputs=["over tls"]), timeout=30).embeddings) == 1
        ch.close()
        plain = pb_grpc.EmbedderStub(grpc.insecure_channel(f"127.0.0.1:{s.port}"))
        with pytest.raises(grpc.RpcError) as e:
            plain.Embed(pb.EmbedRequest(inputs=["x"]), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.stop()


def test_mutual_tls_rejects_a_client_without_a_certificate(tiny_models_dir, pki):
    s = _tls_server(tiny_models_dir, pki, mutual=True)
    try:
        ch, stub = _secure_stub(s.port, pki, client_cert=True)
        assert len(stub.Embed(pb.EmbedRequest(inputs=["mutual"]), timeout=30).embeddings) == 1
        ch.close()
        ch, stub = _secure_stub(s.port, pki, client_cert=False)
        with pytest.raises(grpc.RpcError) as e:
            stub.Embed(pb.EmbedRequest(inputs=["x"]), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        s.stop()


def test_the_python_client_over_tls_on_one_stream_and_on_several(tiny_models_dir, pki):
    """Client(credentials=…): its channel and each replica's channel of embed_stream(streams=2) are
    secure ones (the pool used to open plaintext channels, which a TLS server refuses)."""
    import asyncio

    from ember_client import AsyncClient, Client

    s = _tls_server(tiny_models_dir, pki, mutual=False)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"][0].read_bytes())
        texts = [f"text number {i}" for i in range(300)]
        with Client(f"localhost:{s.port}", credentials=creds, retries=1, timeout=30) as c:
            one = np.concatenate(list(c.embed_stream(texts, batch_size=16)))
            by_name = np.concatenate(list(c.embed_stream(texts, batch_size=16, streams=2)))
        addr = f"127.0.0.1:{s.port}"
        with Client([addr, addr], credentials=creds, options=[("grpc.ssl_target_name_override", "localhost")],
                    retries=1, timeout=30) as c:
            two = np.concatenate(list(c.embed_stream(texts, batch_size=16, streams=2)))
        np.testing.assert_array_equal(one, by_name)
        np.testing.assert_array_equal(one, two)

        async def unary():
            async with AsyncClient(f"localhost:{s.port}", credentials=creds) as c:
                return await c.embed(texts[:3])

        np.testing.assert_allclose(asyncio.run(unary()), one[:3], atol=1e-6)
    finally:
        s.stop()


def _tls_server(models_dir, pki, mutual: bool):
    # The fixture's own (plaintext) channel is never used here; the tests make secure ones.
    return start_server(models_dir=str(models_dir), models=("tiny-embed",), tls_cert=str(pki["server"][0]),
                        tls_key=str(pki["server"][1]), tls_client_ca=str(pki["ca"][0]) if mutual else "")


def test_message_size_limit(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), max_message_bytes=4096)
    try:
        with pytest.raises(grpc.RpcError) as e:
            s.embedder.Embed(pb.EmbedRequest(inputs=["x" * 5000]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(s.embedder.Embed(pb.EmbedRequest(inputs=["small"])).embeddings) == 1
    finally:
        s.stop()


# ---- embedding cache ----------------------------------------------------------------------
def test_cache_hits_skip_the_queue_and_give_identical_vectors(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), default_embed_model="tiny-embed", cache_bytes=1 << 20)
    sched = s.server.registry.models["tiny-embed"].scheduler
    real, batches = sched.engine, []

    class Counting:
        manifest, needs_type_ids = real.manifest, real.needs_type_ids

        def infer(self, ids, mask, type_ids):
            batches.append(ids.shape[0])
            return real.infer(ids, mask, type_ids)

    sched.engine = Counting()

    def embed(texts, **kw):
        r = s.embedder.Embed(pb.EmbedRequest(inputs=texts, encoding=pb.ENCODING_FLOAT32_BYTES, **kw))
        return r, [bytes(e.packed) for e in r.embeddings]

    try:
        first, v1 = embed(["alpha text", "beta text"])
        again, v2 = embed(["alpha text", "beta text"])
        assert batches == [2] and v1 == v2  # the repeat never reached inference; same bytes
        assert [e.tokens for e in again.embeddings] == [e.tokens for e in first.embeddings]
        _, v3 = embed(["beta text", "gamma text"])  # one hit, one miss: only the miss runs
        assert batches == [2, 1] and v3[0] == v1[1]
        _, q = embed(["alpha text"], input_type=pb.INPUT_TYPE_QUERY)  # another prompt: another entry
        assert batches == [2, 1, 1] and q[0] != v1[0]
        _, d16 = embed(["alpha text"], dimensions=16)  # one entry serves every Matryoshka size
        assert batches == [2, 1, 1] and len(d16[0]) == 16 * 4
        m = scrape(s)
    finally:
        sched.engine = real
        s.stop()
    assert value(m, "ember_cache_hits_total", model="tiny-embed") == 4
    assert value(m, "ember_cache_misses_total", model="tiny-embed") == 4


def test_cache_keeps_to_its_byte_budget_and_ttl():
    import time as _time

    import numpy as np

    from ember.cache import ENTRY_OVERHEAD, EmbeddingCache, Entry

    c = EmbeddingCache(max_bytes=3 * (128 + ENTRY_OVERHEAD), ttl_seconds=0.3)
    for i in range(10):
        c.put(("m", "", True, "right", bytes([i])), Entry(np.zeros(32, np.float32), 3, False))
    assert len(c) == 3 and c.bytes <= 3 * (128 + ENTRY_OVERHEAD)  # least recently used went first
    assert c.get(("m", "", True, "right", bytes([9]))) is not None
    assert c.get(("m", "", True, "right", bytes([0]))) is None
    _time.sleep(0.4)
    assert c.get(("m", "", True, "right", bytes([9]))) is None  # expired


# ---- logs ---------------------------------------------------------------------------------
def test_json_logs_carry_the_request_id(tiny_models_dir):
    import json
    import os
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--models-dir", str(tiny_models_dir), "--models", "tiny-embed", "--log-format", "json",
                             "--log-level", "debug"], stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    lines: list[dict] = []
    port = None
    try:
        for raw in proc.stderr:
            rec = json.loads(raw)  # every line is one JSON object
            lines.append(rec)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", rec["message"])
            port = int(m.group(1)) if m else port
            if "ready" in rec["message"]:
                break
        reader = threading.Thread(target=lambda: lines.extend(json.loads(r) for r in proc.stderr), daemon=True)
        reader.start()
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.EmbedderStub(ch)
        stub.Embed(pb.EmbedRequest(inputs=["hello"]), metadata=(("x-request-id", "req-abc-123"),))
        with pytest.raises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest(inputs=["ok", ""], request_id="req-bad-7"))
        ch.close()
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    by_id = {}
    for rec in lines:
        by_id.setdefault(rec.get("request_id", ""), []).append(rec)
    ok = by_id["req-abc-123"]
    assert any(r["level"] == "debug" and r["message"].startswith("Embed model=tiny-embed ok") for r in ok)
    bad = by_id["req-bad-7"]
    assert any(r["level"] == "warning" and "INVALID_ARGUMENT" in r["message"] and "inputs[1]" in r["message"]
               for r in bad)
    startup = " ".join(r["message"] for r in by_id[""])
    assert "settings: host=127.0.0.1" in startup and "api_keys=<0 keys>" in startup
    assert "model tiny-embed ready" in startup and "providers cpu" in startup


# ---- the TOML file for multi-model setups ------------------------------------------------------
def test_toml_per_model_settings_are_applied(tiny_models_dir, tmp_path):
    import shutil

    from conftest import ServerThread
    from ember.settings import from_sources

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_models_dir / "tiny-embed", elsewhere / "embedder")
    cfg = tmp_path / "ember.toml"
    cfg.write_text(f"""
host = "127.0.0.1"
port = 0
default_embed_model = "short"
[models.short]
path = "{elsewhere / 'embedder'}"
max_tokens = 8
prompts = {{ shout = "HEY: " }}
providers = ["cpu"]
[models.long]
path = "{tiny_models_dir / 'tiny-embed'}"
max_batch_tokens = 256
[models.wrong-dtype]
path = "{tiny_models_dir / 'tiny-rerank'}"
dtype = "int8"
""")
    s = ServerThread(from_sources({"config": str(cfg)}, {}))
    try:
        s.wait_loaded()
        names = sorted(m.name for m in s.models.ListModels(pb.ListModelsRequest()).models)
        assert names == ["long", "short"]
        assert "models.wrong-dtype.dtype is int8 but the exported model is fp32" in \
            s.server.registry.errors["wrong-dtype"]
        text = "one two three four five six seven eight nine ten"
        short = s.models.Tokenize(pb.TokenizeRequest(model="short", inputs=[text])).inputs[0]
        long = s.models.Tokenize(pb.TokenizeRequest(model="long", inputs=[text])).inputs[0]
        assert (short.tokens, short.truncated) == (8, True) and (long.tokens, long.truncated) == (12, False)
        info = {m.name: m for m in s.models.ListModels(pb.ListModelsRequest()).models}
        assert info["short"].prompts["shout"] == "HEY: " and info["short"].max_tokens == 8
        plain = s.embedder.Embed(pb.EmbedRequest(inputs=["hi"])).embeddings[0].values.values
        shout = s.embedder.Embed(pb.EmbedRequest(inputs=["hi"], prompt_name="shout")).embeddings[0].values.values
        assert list(plain) != list(shout)
        assert s.server.registry.models["long"].scheduler.max_batch_tokens == 256
    finally:
        s.stop()
