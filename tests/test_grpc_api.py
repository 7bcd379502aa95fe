"""Every RPC of the contract through the generated stubs, against a real server with tiny models."""
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import embed
from ember.v1 import ember_pb2 as pb

TEXTS = ["The cat sits on the mat.", "A man is playing a guitar.", "short", "word " * 100]


def vectors(resp):
    if resp.embeddings[0].WhichOneof("data") == "packed":
        return np.stack([np.frombuffer(e.packed, dtype="<f4") for e in resp.embeddings])
    return np.array([list(e.values.values) for e in resp.embeddings], dtype=np.float32)


def test_embed_default_model_float_and_bytes_agree(tiny_server):
    f = embed(tiny_server, TEXTS, request_id="abc")
    b = embed(tiny_server, TEXTS, encoding=pb.ENCODING_FLOAT32_BYTES)
    assert f.model == "tiny-embed" and f.dimensions == 32 and f.request_id == "abc"
    assert [e.WhichOneof("data") for e in f.embeddings] == ["values"] * 4
    assert [e.WhichOneof("data") for e in b.embeddings] == ["packed"] * 4
    np.testing.assert_array_equal(vectors(f), vectors(b))
    np.testing.assert_allclose(np.linalg.norm(vectors(f), axis=1), 1.0, rtol=1e-5)
    # tokens include [CLS]/[SEP]; the long input is cut at the model's 64 tokens
    assert [e.tokens for e in f.embeddings][:3] == [9, 9, 3]
    assert [e.truncated for e in f.embeddings] == [False, False, False, True]
    assert f.embeddings[3].tokens == 64
    assert f.usage.prompt_tokens == sum(e.tokens for e in f.embeddings) == f.usage.total_tokens
    assert f.timing.total_ns > 0 and f.timing.inference_ns > 0 and f.timing.tokenize_ns > 0


def test_a_request_without_an_id_gets_a_distinct_one(tiny_server):
    ids = [embed(tiny_server, ["hello"]).request_id for _ in range(3)]
    ids.append(tiny_server.reranker.Rerank(pb.RerankRequest(query="q", documents=["d"])).request_id)
    assert len(set(ids)) == 4 and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_results_do_not_depend_on_batch_company(tiny_server):
    alone = [vectors(embed(tiny_server, [t]))[0] for t in TEXTS]
    together = vectors(embed(tiny_server, TEXTS))
    np.testing.assert_allclose(np.stack(alone), together, rtol=1e-4, atol=1e-5)


def test_normalize_false_and_matryoshka(tiny_server):
    raw = vectors(embed(tiny_server, TEXTS, normalize=False))
    norm = vectors(embed(tiny_server, TEXTS))
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), norm, rtol=1e-5, atol=1e-6)
    r16 = embed(tiny_server, TEXTS, dimensions=16)
    v16 = vectors(r16)
    assert r16.dimensions == 16 and v16.shape == (4, 16)
    np.testing.assert_allclose(v16, raw[:, :16] / np.linalg.norm(raw[:, :16], axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(vectors(embed(tiny_server, TEXTS, dimensions=16, normalize=False)), raw[:, :16],
                               rtol=1e-6)


def test_prompts_by_input_type_and_name(tiny_server):
    q = vectors(embed(tiny_server, ["hello world"], input_type=pb.INPUT_TYPE_QUERY))
    assert np.allclose(q, vectors(embed(tiny_server, ["query: hello world"])), atol=1e-6)
    d = vectors(embed(tiny_server, ["hello world"], input_type=pb.INPUT_TYPE_DOCUMENT))
    assert np.allclose(d, vectors(embed(tiny_server, ["passage: hello world"])), atol=1e-6)
    c = embed(tiny_server, ["hello world"], prompt_name="classification", input_type=pb.INPUT_TYPE_QUERY)
    assert np.allclose(vectors(c), vectors(embed(tiny_server, ["classify: hello world"])), atol=1e-6)
    assert c.embeddings[0].tokens == embed(tiny_server, ["classify: hello world"]).embeddings[0].tokens
    assert not np.allclose(q, vectors(embed(tiny_server, ["hello world"])), atol=1e-3)


def test_truncation_direction(tiny_server):
    text = "alpha " + "word " * 100 + "omega"
    right = embed(tiny_server, [text])
    left = embed(tiny_server, [text], truncation_direction=pb.TRUNCATION_DIRECTION_LEFT)
    assert right.embeddings[0].truncated and left.embeddings[0].truncated
    assert not np.allclose(vectors(right), vectors(left))
    tm = tiny_server.models
    r_ids = tm.Tokenize(pb.TokenizeRequest(inputs=[text], return_ids=True)).inputs[0].ids
    l_ids = tm.Tokenize(pb.TokenizeRequest(inputs=[text], return_ids=True,
                                           truncation_direction=pb.TRUNCATION_DIRECTION_LEFT)).inputs[0].ids
    assert len(r_ids) == len(l_ids) == 64
    assert r_ids[0] == l_ids[0] == 101 and r_ids[-1] == l_ids[-1] == 102  # [CLS] … [SEP] kept on both sides
    omega = tm.Tokenize(pb.TokenizeRequest(inputs=["omega"], return_ids=True)).inputs[0].ids[1:-1]
    assert list(l_ids[-1 - len(omega):-1]) == list(omega) and list(r_ids[-1 - len(omega):-1]) != list(omega)


def test_tokenize(tiny_server):
    r = tiny_server.models.Tokenize(pb.TokenizeRequest(inputs=["hello world", "word " * 100], return_ids=True,
                                                       input_type=pb.INPUT_TYPE_QUERY))
    assert r.model == "tiny-embed"
    assert r.inputs[0].tokens == len(r.inputs[0].ids) == 6  # [CLS] query : hello world [SEP]
    assert (r.inputs[1].tokens, r.inputs[1].truncated) == (64, True)
    r = tiny_server.models.Tokenize(pb.TokenizeRequest(model="tiny-rerank", inputs=["hello world"]))
    assert (r.model, r.inputs[0].tokens, list(r.inputs[0].ids)) == ("tiny-rerank", 4, [])


def test_rerank_cross_encoder(tiny_server):
    docs = ["doc one", "another document about cats", "a third", "and a fourth one here"]
    r = tiny_server.reranker.Rerank(pb.RerankRequest(query="what about cats", documents=docs, request_id="r1"))
    assert r.model == "tiny-rerank" and r.request_id == "r1"
    scores = [x.score for x in r.results]
    assert sorted(x.index for x in r.results) == [0, 1, 2, 3]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    raw = tiny_server.reranker.Rerank(pb.RerankRequest(query="what about cats", documents=docs, raw_scores=True))
    raw_by_index = {x.index: x.score for x in raw.results}
    for x in r.results:
        assert x.score == pytest.approx(1 / (1 + np.exp(-raw_by_index[x.index])), rel=1e-5)
        assert not x.HasField("document")
    top = tiny_server.reranker.Rerank(pb.RerankRequest(query="what about cats", documents=docs, top_n=2,
                                                       return_documents=True))
    assert [x.index for x in top.results] == [x.index for x in r.results[:2]]
    assert [x.document for x in top.results] == [docs[x.index] for x in top.results]
    assert top.usage.prompt_tokens == sum(x.tokens for x in r.results)


def test_rerank_with_embedding_model_is_cosine(tiny_server):
    docs = ["doc one", "another document about cats", "a third"]
    r = tiny_server.reranker.Rerank(pb.RerankRequest(model="tiny-embed", query="cats", documents=docs))
    q = vectors(embed(tiny_server, ["cats"], input_type=pb.INPUT_TYPE_QUERY))[0]
    d = vectors(embed(tiny_server, docs, input_type=pb.INPUT_TYPE_DOCUMENT))
    expected = d @ q
    assert [x.index for x in r.results] == list(np.argsort(-expected))
    for x in r.results:
        assert x.score == pytest.approx(expected[x.index], abs=1e-5)


def test_list_models(tiny_server):
    assert tiny_server.server.registry.models["tiny-embed"].lanes_ready.wait(60)  # lanes built, or none
    models = {m.name: m for m in tiny_server.models.ListModels(pb.ListModelsRequest()).models}
    assert set(models) == {"tiny-embed", "tiny-rerank"}  # `tampered` was refused
    e, r = models["tiny-embed"], models["tiny-rerank"]
    assert (e.task, e.dimensions, e.max_tokens, e.pooling) == (pb.MODEL_TASK_EMBED, 32, 64, "mean")
    assert list(e.matryoshka_dimensions) == [32, 16, 8] and e.prompts["query"] == "query: "
    assert e.is_default_embed and not e.is_default_rerank and e.ready
    assert r.task == pb.MODEL_TASK_RERANK and r.is_default_rerank
    assert list(e.providers) == ["cpu"]  # the CPU build: what ORT really activated
    assert set(e.unavailable_providers) == {"tensorrt", "cuda"}
    # the batch budget (this machine has the memory for the default one) and the lanes
    sched = tiny_server.server.registry.models["tiny-embed"].scheduler
    assert e.max_batch_tokens == sched.max_batch_tokens == 16384 and e.lanes == len(sched.lanes)


def test_health(tiny_server):
    stub = health_pb2_grpc.HealthStub(tiny_server.channel)

    def status(name):
        return stub.Check(health_pb2.HealthCheckRequest(service=name)).status

    S, N = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", "ember.v1.Embedder", "ember.v1.Reranker", "ember.v1.Models", "model/tiny-embed",
                 "model/tiny-rerank"):
        assert status(name) == S, name
    assert status("model/tampered") == N


def test_reflection_lists_services(tiny_server):
    stub = reflection_pb2_grpc.ServerReflectionStub(tiny_server.channel)
    resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"ember.v1.Embedder", "ember.v1.Reranker", "ember.v1.Models", "grpc.health.v1.Health"} <= names


def test_embed_stream_5000_inputs_each_answered_once_in_order(tiny_server):
    texts = [f"input number {i} " + "x " * (i % 50) for i in range(5000)]
    chunks = [texts[i:i + 50] for i in range(0, 5000, 50)]
    reqs = (pb.EmbedRequest(inputs=c, request_id=str(i), encoding=pb.ENCODING_FLOAT32_BYTES)
            for i, c in enumerate(chunks))
    got = list(tiny_server.embedder.EmbedStream(reqs, timeout=300))
    assert [r.request_id for r in got] == [str(i) for i in range(len(chunks))]
    assert [len(r.embeddings) for r in got] == [50] * 100
    # in order: spot-check rows against unary answers for the same inputs
    for i in (0, 37, 99):
        np.testing.assert_allclose(vectors(got[i]), vectors(embed(tiny_server, chunks[i])), rtol=1e-4, atol=1e-5)
    assert [e.tokens for r in got for e in r.embeddings] == [
        t.tokens for c in chunks for t in tiny_server.models.Tokenize(pb.TokenizeRequest(inputs=c)).inputs]


def test_rerank_stream(tiny_server):
    reqs = [pb.RerankRequest(query=f"query {i}", documents=["a", "b c", "d e f"], request_id=str(i))
            for i in range(20)]
    got = list(tiny_server.reranker.RerankStream(iter(reqs), timeout=60))
    assert [r.request_id for r in got] == [str(i) for i in range(20)]
    assert all(len(r.results) == 3 for r in got)
    single = tiny_server.reranker.Rerank(reqs[7])
    assert [(x.index, x.score) for x in got[7].results] == [(x.index, x.score) for x in single.results]
