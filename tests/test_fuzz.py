"""Property-based requests against a live server: every answer is OK or a documented error with a
message, never INTERNAL, and the server keeps answering health checks (the start of issue #7).

CI runs 2,500 generated cases (500 per test); `make reliability` (EMBER_FUZZ_EXAMPLES=2000 by default,
10,000 cases) or `EMBER_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py` runs longer.
"""
import os

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import domain
from ember.ext import numpy_kernels
from ember.v1 import ember_pb2 as pb

EXAMPLES = int(os.environ.get("EMBER_FUZZ_EXAMPLES", "500"))  # × 5 generated tests = 2,500 cases in CI
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.RESOURCE_EXHAUSTED}

# Unusual text: control characters and NUL, combining marks, RTL, emoji, surrogate-free planes.
weird = st.sampled_from(["\x00", "\u0301", "\u202e", "\U0001F600", "\u200b", "\ufeff", "\n\t", "ﷺ", "𝔘"])
texts = st.one_of(st.text(max_size=300), st.lists(weird, max_size=20).map("".join),
                  st.text(min_size=1, max_size=40).map(lambda s: s * 50))
enum = st.integers(min_value=0, max_value=12)
model = st.sampled_from(["", "tiny-embed", "tiny-rerank", "tampered", "nope", "../tiny-embed"])


def answered(call):
    try:
        return call(), None
    except grpc.RpcError as e:
        assert e.code() in DOCUMENTED, f"{e.code()}: {e.details()}"
        assert e.details(), "an error needs a message"
        return None, e


def healthy(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


@FUZZ
@given(inputs=st.lists(texts, max_size=70), input_type=enum, prompt=st.sampled_from(["", "query", "x"]),
       normalize=st.one_of(st.none(), st.booleans()), dims=st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)),
       truncate=st.one_of(st.none(), st.booleans()), direction=enum, priority=enum, encoding=enum, model=model)
def test_fuzz_embed(tiny_server, inputs, input_type, prompt, normalize, dims, truncate, direction, priority,
                    encoding, model):
    req = pb.EmbedRequest(model=model, inputs=inputs, input_type=input_type, prompt_name=prompt, dimensions=dims,
                          truncation_direction=direction, priority=priority, encoding=encoding)
    if normalize is not None:
        req.normalize = normalize
    if truncate is not None:
        req.truncate = truncate
    resp, _ = answered(lambda: tiny_server.embedder.Embed(req, timeout=60))
    if resp is not None:
        assert len(resp.embeddings) == len(inputs)
        name = domain.ENCODINGS[encoding]
        for e in resp.embeddings:
            if e.WhichOneof("data") == "values":
                assert name == "float" and len(e.values.values) == resp.dimensions
                assert np.isfinite(np.array(e.values.values)).all()
            else:  # packed: the encoding's width; float32 / float16 finite
                assert len(e.packed) == numpy_kernels.encoded_width("float32" if name == "float" else name,
                                                                   resp.dimensions)
                if name in ("float32", "float16"):
                    assert np.isfinite(np.frombuffer(e.packed, "<f4" if name == "float32" else "<f2")).all()
    healthy(tiny_server)


@FUZZ
@given(query=texts, documents=st.lists(texts, max_size=70), top_n=st.one_of(st.integers(0, 80),
       st.integers(0, 2**32 - 1)), raw=st.booleans(), ret=st.booleans(), truncate=st.one_of(st.none(), st.booleans()),
       priority=enum, direction=enum, model=model)
def test_fuzz_rerank(tiny_server, query, documents, top_n, raw, ret, truncate, priority, direction, model):
    req = pb.RerankRequest(model=model, query=query, documents=documents, top_n=top_n, raw_scores=raw,
                           return_documents=ret, priority=priority, truncation_direction=direction)
    if truncate is not None:
        req.truncate = truncate
    resp, _ = answered(lambda: tiny_server.reranker.Rerank(req, timeout=60))
    if resp is not None:
        assert len(resp.results) == (top_n or len(documents))
        scores = [r.score for r in resp.results]
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
        assert len({r.index for r in resp.results}) == len(resp.results)
    healthy(tiny_server)


@FUZZ
@given(inputs=st.lists(texts, max_size=70), model=model, input_type=enum, ids=st.booleans(), direction=enum)
def test_fuzz_tokenize(tiny_server, inputs, model, input_type, ids, direction):
    req = pb.TokenizeRequest(model=model, inputs=inputs, input_type=input_type, return_ids=ids,
                             truncation_direction=direction)
    resp, _ = answered(lambda: tiny_server.models.Tokenize(req, timeout=60))
    if resp is not None:
        assert len(resp.inputs) == len(inputs)
    healthy(tiny_server)


@FUZZ
@given(body=st.binary(max_size=200),
       method=st.sampled_from(["/ember.v1.Embedder/Embed", "/ember.v1.Reranker/Rerank", "/ember.v1.Models/Tokenize",
                               "/ember.v1.Models/ListModels"]))
def test_fuzz_random_bytes_on_the_wire(tiny_server, body, method):
    call = tiny_server.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    _, err = answered(lambda: call(body, timeout=30))
    if err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in err.details():
        assert "request" in err.details()
    healthy(tiny_server)


embed_requests = st.builds(
    lambda inputs, dims, model, enc, prio: pb.EmbedRequest(inputs=inputs, dimensions=dims, model=model, encoding=enc,
                                                         priority=prio),
    st.lists(texts, max_size=70), st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), model, enum, enum)
rerank_requests = st.builds(
    lambda q, docs, top_n, model: pb.RerankRequest(query=q, documents=docs, top_n=top_n, model=model),
    texts, st.lists(texts, max_size=20), st.integers(0, 25), model)


@FUZZ
@given(embeds=st.lists(embed_requests, min_size=1, max_size=5), reranks=st.lists(rerank_requests, min_size=1,
       max_size=5))
def test_fuzz_streams(tiny_server, embeds, reranks):
    """Both bidirectional streams: responses come in order, one per message, until the first bad
    message ends the stream with a documented code."""
    for rpc, reqs in ((tiny_server.embedder.EmbedStream, embeds), (tiny_server.reranker.RerankStream, reranks)):
        got = []

        def run(rpc=rpc, reqs=reqs, got=got):
            got.extend(rpc(iter(reqs), timeout=60))

        answered(run)
        assert len(got) <= len(reqs)
        for req, resp in zip(reqs, got, strict=False):  # got may stop short
            n = len(resp.embeddings) if hasattr(resp, "embeddings") else len(resp.results)
            assert n == (len(req.inputs) if hasattr(req, "inputs") else (req.top_n or len(req.documents)))
    healthy(tiny_server)


def test_corrupt_body_is_invalid_argument_naming_the_message(tiny_server):
    call = tiny_server.channel.unary_unary("/ember.v1.Embedder/Embed", request_serializer=None,
                                           response_deserializer=None)
    _, err = answered(lambda: call(b"\xff\xff\xff", timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ember.v1.EmbedRequest" in err.details()
    stream = tiny_server.channel.stream_stream("/ember.v1.Embedder/EmbedStream", request_serializer=None,
                                               response_deserializer=None)
    good = pb.EmbedRequest(inputs=["fine"]).SerializeToString()
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for r in stream(iter([good, b"\xff\xff\xff", good]), timeout=30):
            got.append(r)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in e.value.details()
    assert len(got) == 1  # the message before the corrupt one was answered
