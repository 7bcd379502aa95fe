"""DESIGN.md's error table, row by row: the status code and the BadRequest field violation."""
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ember.v1 import ember_pb2 as pb

LONG = "word " * 200


def violation(err: grpc.RpcError) -> tuple[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None, "error carries no google.rpc.Status"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            assert len(br.field_violations) == 1
            v = br.field_violations[0]
            return v.field, v.description
    raise AssertionError("no BadRequest detail")


EMBED_CASES = [
    ("empty inputs", dict(inputs=[]), "inputs", "at least one input"),
    ("empty string", dict(inputs=["ok", ""]), "inputs[1]", "empty string"),
    ("too many inputs", dict(inputs=["x"] * 65), "inputs", "the limit is 64"),
    ("too long, truncate=false", dict(inputs=["ok", LONG], truncate=False), "inputs[1]", "limit of 64"),
    ("dimensions too large", dict(inputs=["ok"], dimensions=33), "dimensions", "larger than the model's 32"),
    ("dimensions not allowed", dict(inputs=["ok"], dimensions=12), "dimensions", "allows 32, 16, 8"),
    ("unknown prompt", dict(inputs=["ok"], prompt_name="nope"), "prompt_name", "unknown prompt 'nope'"),
    ("unknown enum", dict(inputs=["ok"], input_type=7), "input_type", "unknown value 7"),
    ("bad direction", dict(inputs=["ok"], truncation_direction=9), "truncation_direction", "unknown value 9"),
    ("rerank model cannot embed", dict(inputs=["ok"], model="tiny-rerank"), "model", "cannot embed"),
    ("input over max_input_chars", dict(inputs=["ok", "x" * 5001]), "inputs[1]", "limit is 5000 per input"),
    ("request over max_request_chars", dict(inputs=["y" * 4000] * 6), "inputs", "limit is 20000 per request"),
]


@pytest.mark.parametrize("name,kw,field,text", EMBED_CASES, ids=[c[0] for c in EMBED_CASES])
def test_embed_invalid_argument(tiny_server, name, kw, field, text):
    with pytest.raises(grpc.RpcError) as e:
        tiny_server.embedder.Embed(pb.EmbedRequest(**kw))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got_field, description = violation(e.value)
    assert got_field == field and text in description
    assert field.split("[")[0] in e.value.details()
    assert_still_serving(tiny_server)


DOCS = ["a", "b", "c"]
RERANK_CASES = [
    ("empty query", dict(query="", documents=DOCS), "query", "empty string"),
    ("no documents", dict(query="q", documents=[]), "documents", "at least one document"),
    ("empty document", dict(query="q", documents=["a", "b", ""]), "documents[2]", "empty string"),
    ("too many documents", dict(query="q", documents=["d"] * 65), "documents", "the limit is 64"),
    ("top_n too large", dict(query="q", documents=DOCS, top_n=4), "top_n", "more than the 3 documents"),
    ("query over max_input_chars", dict(query="q" * 5001, documents=DOCS), "query", "limit is 5000"),
    ("document over max_input_chars", dict(query="q", documents=["a", "d" * 5001]), "documents[1]",
     "limit is 5000 per document"),
    ("too long, truncate=false", dict(query="q", documents=["a", LONG], truncate=False), "documents[1]",
     "limit of 128"),
]


@pytest.mark.parametrize("name,kw,field,text", RERANK_CASES, ids=[c[0] for c in RERANK_CASES])
def test_rerank_invalid_argument(tiny_server, name, kw, field, text):
    with pytest.raises(grpc.RpcError) as e:
        tiny_server.reranker.Rerank(pb.RerankRequest(**kw))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got_field, description = violation(e.value)
    assert got_field == field and text in description
    assert_still_serving(tiny_server)


def test_rerank_by_embedding_model_names_too_long_query(tiny_server):
    with pytest.raises(grpc.RpcError) as e:
        tiny_server.reranker.Rerank(pb.RerankRequest(model="tiny-embed", query=LONG, documents=DOCS,
                                                     truncate=False))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violation(e.value)[0] == "query"


def test_negative_top_n_on_the_wire(tiny_server):
    """A client that writes top_n as int32 -1 sends a 10-byte varint; uint32 reads it as 4294967295."""
    body = pb.RerankRequest(query="q", documents=DOCS).SerializeToString()
    body += bytes([0x20]) + b"\xff" * 9 + b"\x01"  # field 4 (top_n), varint of -1
    call = tiny_server.channel.unary_unary("/ember.v1.Reranker/Rerank", request_serializer=None,
                                           response_deserializer=pb.RerankResponse.FromString)
    with pytest.raises(grpc.RpcError) as e:
        call(body)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violation(e.value)[0] == "top_n"


@pytest.mark.parametrize("rpc", ["embed", "rerank", "tokenize"])
def test_unknown_model_is_not_found(tiny_server, rpc):
    with pytest.raises(grpc.RpcError) as e:
        if rpc == "embed":
            tiny_server.embedder.Embed(pb.EmbedRequest(model="no-such-model", inputs=["x"]))
        elif rpc == "rerank":
            tiny_server.reranker.Rerank(pb.RerankRequest(model="no-such-model", query="q", documents=["d"]))
        else:
            tiny_server.models.Tokenize(pb.TokenizeRequest(model="no-such-model", inputs=["x"]))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in e.value.details()


def test_refused_model_is_unavailable_with_its_reason(tiny_server):
    with pytest.raises(grpc.RpcError) as e:
        tiny_server.embedder.Embed(pb.EmbedRequest(model="tampered", inputs=["x"]))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "checksum mismatch" in e.value.details() and "tokenizer.json" in e.value.details()


def test_stream_error_ends_the_stream_after_earlier_answers(tiny_server):
    reqs = [pb.EmbedRequest(inputs=["fine"], request_id="0"), pb.EmbedRequest(inputs=["fine"], request_id="1"),
            pb.EmbedRequest(inputs=[""], request_id="2"), pb.EmbedRequest(inputs=["never"], request_id="3")]
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for r in tiny_server.embedder.EmbedStream(iter(reqs), timeout=30):
            got.append(r.request_id)
    assert got == ["0", "1"]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violation(e.value)[0] == "inputs[0]"
    # the status names the failing message, in its text and in a trailer
    assert e.value.details().startswith("message request_id=2: inputs[0]: is an empty string")
    assert ("ember-request-id", "2") in e.value.trailing_metadata()
    assert_still_serving(tiny_server)


def test_expired_deadline(tiny_server):
    # gRPC's deadline timer can fire late on a loaded machine, letting a fast answer through; an
    # expired deadline must never give another error, and within a few tries it must give this one.
    # So the call is enough work to outlast the deadline: on a fast VM the tiny model answered 64
    # one-token inputs OK in ~60 % of calls (with a 10 µs timeout as with 100 µs), 64 of 120 tokens
    # in 0.2 %.
    codes = []
    for _ in range(5):
        try:
            tiny_server.embedder.Embed(pb.EmbedRequest(inputs=["x " * 120] * 64), timeout=0.0001)
        except grpc.RpcError as e:
            codes.append(e.code())
            break
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert_still_serving(tiny_server)


def assert_still_serving(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert len(server.embedder.Embed(pb.EmbedRequest(inputs=["still here"])).embeddings) == 1
