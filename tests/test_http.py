"""The HTTP APIs, called by the SDKs people use, unmodified, against a live server: the `openai`
SDK (embeddings, float and base64, dimensions), the `cohere` SDK (rerank), huggingface_hub's
InferenceClient (text-embeddings-inference's routes); and plain HTTP for every error row.
Vectors and scores are compared with the gRPC answers for the same inputs.
"""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import ServerThread, start_server
from ember.settings import Settings
from ember.v1 import ember_pb2 as pb


def http(server, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
    """(status, JSON body, headers) of one plain HTTP call."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{server.server.http_port}{path}", data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


def grpc_vectors(server, texts, **kw) -> np.ndarray:
    resp = server.embedder.Embed(pb.EmbedRequest(inputs=texts, encoding=pb.ENCODING_FLOAT32_BYTES, **kw))
    return np.frombuffer(b"".join(e.packed for e in resp.embeddings), "<f4").reshape(len(texts), -1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


TEXTS = ["hello world", "ember serves embeddings over HTTP too", "a third text"]


def test_openai_sdk_embeddings_float_base64_and_dimensions(tiny_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{tiny_server.server.http_port}/v1", api_key="unused")
    want = grpc_vectors(tiny_server, TEXTS)
    floats = client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.model == "tiny-embed"
    assert cosine(got, want).min() >= 0.99999 and floats.usage.total_tokens > 0
    # the SDK's default: it asks for base64 and decodes it; byte for byte the gRPC bytes
    b64 = client.embeddings.create(model="tiny-embed", input=TEXTS)
    np.testing.assert_array_equal(np.array([d.embedding for d in b64.data], dtype=np.float32), want)
    status, raw, _ = http(tiny_server, "POST", "/v1/embeddings", {"model": "tiny-embed", "input": TEXTS[0],
                                                                   "encoding_format": "base64"})
    assert status == 200 and base64.b64decode(raw["data"][0]["embedding"]) == want[0].astype("<f4").tobytes()
    small = client.embeddings.create(model="tiny-embed", input=TEXTS, dimensions=16, encoding_format="float")
    want16 = grpc_vectors(tiny_server, TEXTS, dimensions=16)
    assert len(small.data[0].embedding) == 16
    assert cosine(np.array([d.embedding for d in small.data], dtype=np.float32), want16).min() >= 0.99999
    assert {m.id for m in client.models.list().data} >= {"tiny-embed", "tiny-rerank"}


def test_cohere_sdk_rerank(tiny_server):
    import cohere

    co = cohere.ClientV2(api_key="unused", base_url=f"http://127.0.0.1:{tiny_server.server.http_port}")
    docs = ["Kubernetes probes the gRPC health service", "Embers glow in the fireplace", "health checks"]
    r = co.rerank(model="tiny-rerank", query="how do I check health?", documents=docs, top_n=2)
    want = tiny_server.reranker.Rerank(pb.RerankRequest(model="tiny-rerank", query="how do I check health?",
                                                        documents=docs, top_n=2))
    assert [x.index for x in r.results] == [x.index for x in want.results]
    np.testing.assert_allclose([x.relevance_score for x in r.results], [x.score for x in want.results], atol=1e-6)
    # Jina's shape: documents as objects, the documents echoed back
    status, body, _ = http(tiny_server, "POST", "/v1/rerank", {"model": "tiny-rerank", "query": "health?",
                                                                "documents": [{"text": d} for d in docs],
                                                                "return_documents": True})
    assert status == 200 and {x["document"]["text"] for x in body["results"]} == set(docs)


def test_huggingface_inference_client_on_the_tei_routes(tiny_server, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    from huggingface_hub.utils import reset_sessions

    # The tests run with HF_HUB_OFFLINE (no model hub); the client only talks to this server here.
    # Its HTTP sessions are cached per thread with the offline setting they were made with.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    reset_sessions()

    client = InferenceClient(model=f"http://127.0.0.1:{tiny_server.server.http_port}")
    got = np.asarray(client.feature_extraction("hello world"), dtype=np.float32).reshape(1, -1)
    assert cosine(got, grpc_vectors(tiny_server, ["hello world"])).min() >= 0.99999
    status, body, _ = http(tiny_server, "POST", "/embed", {"inputs": TEXTS, "normalize": False})
    want = grpc_vectors(tiny_server, TEXTS, normalize=False)
    assert status == 200 and cosine(np.array(body, np.float32), want).min() >= 0.99999
    status, body, _ = http(tiny_server, "POST", "/rerank", {"query": "q", "texts": ["a", "b"], "return_text": True})
    assert status == 200 and sorted(x["index"] for x in body) == [0, 1] and {x["text"] for x in body} == {"a", "b"}
    status, body, _ = http(tiny_server, "POST", "/tokenize", {"inputs": "hello world"})
    ids = tiny_server.models.Tokenize(pb.TokenizeRequest(inputs=["hello world"], return_ids=True)).inputs[0].ids
    assert status == 200 and [t["id"] for t in body[0]] == list(ids) and body[0][0]["special"] is True
    assert body[0][1]["text"] == "hello"
    status, body, _ = http(tiny_server, "GET", "/info")
    assert status == 200 and body["model_id"] == "tiny-embed" and body["max_input_length"] == 64
    status, body, _ = http(tiny_server, "GET", "/openapi.json")
    assert status == 200 and {"/v1/embeddings", "/v2/rerank", "/embed", "/health"} <= set(body["paths"])
    assert http(tiny_server, "GET", "/health")[:2] == (200, {"status": "SERVING"})
    monkeypatch.undo()
    reset_sessions()  # offline again for whatever runs next


@pytest.mark.parametrize("path,body,status,field", [
    ("/v1/embeddings", {"model": "tiny-embed"}, 400, "input"),
    ("/v1/embeddings", {"model": "tiny-embed", "input": ["a", ""]}, 400, "inputs[1]"),
    ("/v1/embeddings", {"model": "tiny-embed", "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ("/v1/embeddings", {"model": "tiny-embed", "input": "a", "dimensions": 5}, 400, "dimensions"),
    ("/v1/embeddings", {"model": "no-such-model", "input": "a"}, 404, ""),
    ("/v1/rerank", {"model": "tiny-rerank", "query": "q"}, 400, "documents"),
    ("/embed", {"inputs": [1, 2]}, 400, "inputs"),
])
def test_errors_name_the_field_in_each_apis_shape(tiny_server, path, body, status, field):
    got, answer, _ = http(tiny_server, "POST", path, body)
    assert got == status, answer
    if path.startswith("/v1/embeddings"):  # OpenAI's shape
        assert answer["error"]["type"] in ("invalid_request_error", "not_found_error")
        assert (answer["error"]["param"] or "") == field and answer["error"]["message"]
    elif path == "/embed":  # text-embeddings-inference's
        assert answer["error_type"] == "Validation" and field in answer["error"]
    else:  # Cohere's
        assert field in answer["message"]
    status2, bad, _ = http(tiny_server, "POST", path, raw=b"{not json")
    assert status2 == 400 and "not valid JSON" in json.dumps(bad)


def test_keys_size_limit_overload_and_drain(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), api_keys=("k1",),
                     max_message_bytes=4096, max_queue_items=4, inline_max_tokens=0)
    try:
        body = {"model": "tiny-embed", "input": "a"}
        assert http(s, "POST", "/v1/embeddings", body)[0] == 401
        assert http(s, "POST", "/v1/embeddings", body, {"authorization": "Bearer nope"})[0] == 403
        key = {"authorization": "Bearer k1"}
        assert http(s, "POST", "/v1/embeddings", body, key)[0] == 200
        assert http(s, "GET", "/health")[0] == 200  # health needs no key
        status, answer, _ = http(s, "POST", "/v1/embeddings", {"model": "tiny-embed", "input": "x" * 10_000}, key)
        assert status == 413 and "--max-message-bytes" in answer["error"]["message"]
        # a full queue: 429 with Retry-After (the engine held so that the queue stays full)
        model = s.server.registry.models["tiny-embed"]
        entered, release = threading.Event(), threading.Event()
        for engine in {id(e): e for e in (model.engine, *model.scheduler.lanes)}.values():
            real = engine.infer

            def held(*a, real=real):
                entered.set()
                release.wait(60)
                return real(*a)
            engine.infer = held
        first = threading.Thread(target=http, args=(s, "POST", "/v1/embeddings",
                                                    {"model": "tiny-embed", "input": ["a"] * 4}, key))
        first.start()
        assert entered.wait(30)
        held_next = threading.Thread(target=http, args=(s, "POST", "/v1/embeddings",
                                                        {"model": "tiny-embed", "input": ["b"] * 4}, key))
        held_next.start()
        deadline = threading.Event()
        while model.scheduler.queued() < 4 and not deadline.wait(0.01):
            pass
        status, answer, headers = http(s, "POST", "/v1/embeddings", {"model": "tiny-embed", "input": ["c"] * 2}, key)
        assert status == 429 and answer["error"]["type"] == "rate_limit_error" and int(headers["Retry-After"]) >= 1
        release.set()
        first.join(30)
        held_next.join(30)
        # draining: health 503 at once (requests still served during the delay), then calls 503
        fut = asyncio.run_coroutine_threadsafe(s.server.drain(10, delay=1.0), s.loop)
        import time
        time.sleep(0.3)
        assert http(s, "GET", "/health")[0] == 503
        assert http(s, "POST", "/v1/embeddings", body, key)[0] == 200  # still serving in the delay
        fut.result(30)
    finally:
        release.set()
        s.stop()


def test_503_while_loading(tiny_models_dir, monkeypatch):
    from ember.registry import Registry

    release = threading.Event()
    real = Registry.warm_up
    monkeypatch.setattr(Registry, "warm_up", lambda self, m: (release.wait(60), real(self, m)))
    s = ServerThread(Settings(host="127.0.0.1", port=0, models_dir=str(tiny_models_dir), models=("tiny-embed",)))
    try:
        assert http(s, "GET", "/health")[0] == 503
        status, answer, _ = http(s, "POST", "/embed", {"inputs": "a"})
        assert status == 503 and answer["error_type"] == "Unhealthy"
    finally:
        release.set()
        s.wait_loaded()
        s.stop()
