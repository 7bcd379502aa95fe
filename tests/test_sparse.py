"""Sparse and multi-vector outputs against their reference implementations, on tiny random-weight
models laid out as the real ones: BGE-M3 (XLM-R with its sparse_linear / colbert_linear heads)
against FlagEmbedding's BGEM3FlagModel, and a SPLADE model (BERT masked LM + SpladePooling)
against sentence-transformers' SparseEncoder."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

import families
from conftest import _copy_tokenizer, _tiny_bert_config, run_export, start_server
from ember.v1 import ember_pb2 as pb
from ember_client import Client
from test_encodings import _refused
from test_families import LONG, SHORT

TEXTS = SHORT + [LONG[:3000], "yes", "no no no no"]
ALL = [pb.EMBED_OUTPUT_DENSE, pb.EMBED_OUTPUT_SPARSE, pb.EMBED_OUTPUT_MULTI_VECTOR]


@pytest.fixture(scope="module")
def sparse_models(tmp_path_factory):
    src = tmp_path_factory.mktemp("sparse-src")
    out = tmp_path_factory.mktemp("sparse-models")
    sources = {"bge-m3": families.build_bge_m3(src / "bge-m3"),
               "splade": families.build_splade(src / "splade", _tiny_bert_config(), _copy_tokenizer)}
    run_export(sources["bge-m3"], out / "bge-m3", "embed")
    run_export(sources["bge-m3"], out / "bge-m3-fused", "embed", "--optimize", "O2")
    run_export(sources["bge-m3"], out / "bge-m3-fused-int8", "embed", "--optimize", "O2", "--dtype", "int8")
    run_export(sources["splade"], out / "splade", "embed")
    server = start_server(models_dir=str(out), default_embed_model="bge-m3", max_inputs_per_request=64)
    yield sources, out, server
    server.stop()


@pytest.fixture(scope="module")
def flag_reference(sparse_models):
    pytest.importorskip("FlagEmbedding")
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(str(sparse_models[0]["bge-m3"]), use_fp16=False, devices="cpu")
    out = model.encode(TEXTS, batch_size=4, max_length=8192, return_dense=True, return_sparse=True,
                       return_colbert_vecs=True)
    out["model"] = model
    return out


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def test_bge_m3_exports_its_three_outputs_from_its_own_files(sparse_models):
    _, _, server = sparse_models
    info = {m.name: m for m in server.models.ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert list(info["bge-m3"].outputs) == ALL
    assert list(info["splade"].outputs) == [pb.EMBED_OUTPUT_SPARSE]


@pytest.mark.parametrize("model", ["bge-m3", "bge-m3-fused"])
def test_bge_m3_matches_flagembedding_in_one_pass(sparse_models, flag_reference, model):
    """Plain, and with --optimize O2 (ONNX Runtime's fused Attention, SkipLayerNormalization, …)."""
    _, out, server = sparse_models
    if model == "bge-m3-fused":
        import onnx

        ops = {n.op_type for n in onnx.load(str(out / model / "model.onnx"), load_external_data=False).graph.node}
        assert {"Attention", "SkipLayerNormalization"} <= ops
    with Client(server.address) as c:
        got = c.encode(TEXTS, model=model, sparse=True, multi_vector=True)
    ref = flag_reference
    cos = _cos(got.dense, ref["dense_vecs"])
    print(f"{model} dense min cosine {cos.min():.7f}")
    assert cos.min() >= 0.9999
    worst = 0.0
    for i, lw in enumerate(ref["lexical_weights"]):
        ref_w = {int(k): float(v) for k, v in lw.items()}
        mine = got.sparse[i]
        assert set(mine) == set(ref_w), f"text {i}: token ids differ"
        worst = max([worst] + [abs(mine[k] - ref_w[k]) for k in ref_w])
    print(f"{model} lexical weights max |Δ| {worst:.2e}")
    assert worst <= 1e-4
    assert got.sparse.dimensions == server.server.registry.models[model].tokenizer.vocab_size()
    low = 1.0
    for i, ref_vecs in enumerate(ref["colbert_vecs"]):
        assert got.multi_vector[i].shape == ref_vecs.shape
        low = min(low, float(_cos(got.multi_vector[i], ref_vecs).min()))
    print(f"{model} colbert min cosine {low:.7f}")
    assert low >= 0.9999


def test_bge_m3_outputs_alone_equal_them_together_and_in_a_mixed_batch(sparse_models):
    """Each output asked alone equals the same output asked with the others, and requests for
    different outputs that meet in one batch each get what they asked for."""
    import concurrent.futures as cf

    _, _, server = sparse_models
    with Client(server.address) as c:
        together = c.encode(TEXTS, model="bge-m3", sparse=True, multi_vector=True)
        dense = c.embed(TEXTS, model="bge-m3")
        sparse = c.encode(TEXTS, model="bge-m3", dense=False, sparse=True)
        with cf.ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(c.encode, [t], model="bge-m3", dense=i % 2 == 0, sparse=i % 3 == 0,
                                 multi_vector=i % 2 == 1) for i, t in enumerate(TEXTS * 3)]
            mixed = [f.result() for f in calls]
    np.testing.assert_allclose(dense, together.dense, atol=1e-5)
    assert sparse.dense is None and sparse.multi_vector is None
    for i in range(len(TEXTS)):
        assert sparse.sparse[i].keys() == together.sparse[i].keys()
    for i, got in enumerate(mixed):
        j = i % len(TEXTS)
        assert (got.dense is not None) == (i % 2 == 0) and (got.multi_vector is not None) == (i % 2 == 1)
        if got.dense is not None:
            np.testing.assert_allclose(got.dense[0], together.dense[j], atol=1e-5)
        if got.multi_vector is not None:
            np.testing.assert_allclose(got.multi_vector[0], together.multi_vector[j], atol=1e-5)
        if i % 3 == 0:
            assert got.sparse[0].keys() == together.sparse[j].keys()


def test_sparse_top_k_min_weight_and_tokens(sparse_models):
    _, _, server = sparse_models
    with Client(server.address) as c:
        full = c.encode(TEXTS, model="bge-m3", dense=False, sparse=True).sparse
        top = c.encode(TEXTS, model="bge-m3", dense=False, sparse=True, sparse_top_k=3, return_tokens=True).sparse
        cut = c.encode(TEXTS, model="bge-m3", dense=False, sparse=True, sparse_min_weight=0.1).sparse
    tokenizer = server.server.registry.models["bge-m3"].tokenizer
    for i in range(len(TEXTS)):
        weights = full.values[i]
        best = set(full.indices[i][np.argsort(-weights, kind="stable")[:3]].tolist())
        assert set(top.indices[i].tolist()) == best and list(top.indices[i]) == sorted(top.indices[i])
        assert top.tokens[i] == tokenizer.token_texts(top.indices[i])
        assert set(cut.indices[i].tolist()) == set(full.indices[i][weights >= 0.1].tolist())
    matrix = full.to_scipy()
    assert matrix.shape == (len(TEXTS), full.dimensions) and matrix.nnz == sum(len(i) for i in full.indices)


def test_multi_vectors_in_compact_encodings(sparse_models):
    _, _, server = sparse_models
    with Client(server.address) as c:
        floats = c.encode(TEXTS, model="bge-m3", dense=False, multi_vector=True).multi_vector
        half = c.encode(TEXTS, model="bge-m3", dense=False, multi_vector=True, encoding="float16").multi_vector
        bits = c.encode(TEXTS, model="bge-m3", dense=False, multi_vector=True, encoding="ubinary").multi_vector
    for f, h, b in zip(floats, half, bits, strict=True):
        np.testing.assert_array_equal(h, f.astype(np.float16))
        np.testing.assert_array_equal(b, np.packbits(f > 0, axis=-1))


def test_outputs_a_model_lacks_are_refused_naming_the_field(sparse_models):
    _, _, server = sparse_models
    assert "no MULTI_VECTOR output (it has SPARSE)" in _refused(server, model="splade",
                                                                 outputs=[pb.EMBED_OUTPUT_MULTI_VECTOR])
    assert _refused(server, model="splade", outputs=[pb.EMBED_OUTPUT_DENSE]).startswith("outputs:")
    detail = _refused(server, model="bge-m3", outputs=[pb.EMBED_OUTPUT_MULTI_VECTOR], encoding=pb.ENCODING_INT8)
    assert detail.startswith("encoding:") and "multi_vector" in detail


def test_splade_matches_sentence_transformers_sparse_encoder(sparse_models):
    from sentence_transformers import SparseEncoder

    sources, _, server = sparse_models
    ref = SparseEncoder(str(sources["splade"]), device="cpu").encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    with Client(server.address) as c:
        got = c.encode(TEXTS, model="splade", dense=False, sparse=True).sparse
        default = server.embedder.Embed(pb.EmbedRequest(model="splade", inputs=TEXTS[:2]), timeout=60)
    # Rerank scores by the dot product of the sparse vectors, as SparseEncoder.similarity does
    resp = server.reranker.Rerank(pb.RerankRequest(model="splade", query=TEXTS[0], documents=TEXTS[1:]), timeout=60)
    scores = {r.index: r.score for r in resp.results}
    want = ref[1:] @ ref[0]
    np.testing.assert_allclose([scores[i] for i in range(len(want))], want, rtol=1e-4)
    dense_got = got.to_scipy().toarray()
    assert dense_got.shape == ref.shape
    print(f"splade max |Δ| {np.abs(dense_got - ref).max():.2e}, {int((ref > 0).sum(1).mean())} non-zero per text")
    np.testing.assert_array_equal(dense_got > 0, ref > 0)
    np.testing.assert_allclose(dense_got, ref, atol=1e-4)
    # A SPLADE model's default output is its sparse vector
    assert default.embeddings[0].WhichOneof("data") is None and len(default.embeddings[0].sparse.indices) > 0
    assert default.dimensions == 0 and default.sparse_dimensions == 30522


def test_rerank_with_bge_m3_is_colbert_maxsim(sparse_models, flag_reference, tmp_path):
    """Rerank on a model with multi-vectors scores by MaxSim, as FlagEmbedding's colbert_score; the
    bulk `ember rerank` gives the server's scores."""
    import json
    import subprocess
    import sys

    _, _, server = sparse_models
    query, docs = TEXTS[0], TEXTS[1:]
    resp = server.reranker.Rerank(pb.RerankRequest(model="bge-m3", query=query, documents=docs), timeout=60)
    got = np.empty(len(docs))
    for r in resp.results:
        got[r.index] = r.score
    vecs = flag_reference["colbert_vecs"]
    ref = np.array([float(flag_reference["model"].colbert_score(vecs[0], vecs[i + 1])) for i in range(len(docs))])
    print(f"bge-m3 MaxSim max |Δ| {np.abs(got - ref).max():.2e}")
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert [r.index for r in resp.results] == list(np.argsort(-got, kind="stable"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q0", "text": query}) + "\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": d}) + "\n"
                                              for i, d in enumerate(docs)))
    for model in ("bge-m3", "splade"):  # MaxSim; SPLADE's dot product: both through the server's Rerank
        r = subprocess.run([sys.executable, "-m", "ember", "rerank", str(tmp_path / "q.jsonl"),
                            str(tmp_path / "d.jsonl"), "-o", str(tmp_path / f"{model}.npy"), "--server",
                            server.address, "--model", model, "--no-progress"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        resp = server.reranker.Rerank(pb.RerankRequest(model=model, query=query, documents=docs), timeout=60)
        want = np.empty(len(docs))
        for x in resp.results:
            want[x.index] = x.score
        np.testing.assert_allclose(np.load(tmp_path / f"{model}.npy")[0], want, rtol=1e-6)


def test_tei_embed_sparse_over_http(sparse_models):
    """POST /embed_sparse answers text-embeddings-inference's shape ([[{index, value}]]) with the
    gRPC sparse vectors; a model without a sparse output is a 400 naming `outputs`."""
    from test_http import http

    _, _, server = sparse_models
    status, body, _ = http(server, "POST", "/embed_sparse", {"inputs": TEXTS[:3], "model": "splade"})
    assert status == 200 and len(body) == 3
    with Client(server.address) as c:
        ref = c.encode(TEXTS[:3], model="splade", dense=False, sparse=True).sparse
    for i, row in enumerate(body):
        assert [x["index"] for x in row] == ref.indices[i].tolist()
        np.testing.assert_allclose([x["value"] for x in row], ref.values[i], rtol=1e-6)
    status, body, _ = http(server, "POST", "/embed_sparse", {"inputs": "hello"})  # the default model, bge-m3
    assert status == 200 and len(body) == 1 and body[0]
    status, _, _ = http(server, "POST", "/embed_sparse", {"inputs": ["x"], "model": "nope"})
    assert status == 404
    # the dense routes refuse a sparse-only model, naming the field, rather than answer empty vectors
    status, body, _ = http(server, "POST", "/v1/embeddings", {"input": ["x"], "model": "splade"})
    assert status == 400 and "no DENSE output" in body["error"]["message"], body


def test_the_readmes_sparse_grpcurl_example(sparse_models):
    """The README's grpcurl line for sparse output, run as grpcurl runs it (reflection + JSON)."""
    import shlex

    from test_readme import grpcurl, readme_block

    _, _, server = sparse_models
    block = readme_block("### Compact vectors, sparse and multi-vector outputs", "bash")
    line = shlex.split(block)  # one command (its JSON spans two lines inside the quotes)
    assert line[0] == "grpcurl" and line[-1] == "ember.v1.Embedder/Embed"
    got = grpcurl(server.address, line)
    sparse = got["embeddings"][0]["sparse"]
    assert 0 < len(sparse["indices"]) == len(sparse["values"]) == len(sparse["tokens"]) <= 8
    assert got["sparseDimensions"] > 0 and "values" not in got["embeddings"][0]


def test_the_async_client_encodes_the_same(sparse_models):
    import asyncio

    from ember_client import AsyncClient

    _, _, server = sparse_models

    async def run():
        async with AsyncClient(server.address) as c:
            return await c.encode(TEXTS[:3], model="bge-m3", sparse=True, multi_vector=True, encoding="float16")

    got = asyncio.run(run())
    with Client(server.address) as c:
        ref = c.encode(TEXTS[:3], model="bge-m3", sparse=True, multi_vector=True, encoding="float16")
    np.testing.assert_array_equal(got.dense, ref.dense)
    assert got.dense.dtype == np.float16 and got.sparse[0] == ref.sparse[0]
    for a, b in zip(got.multi_vector, ref.multi_vector, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_fused_graph_quantizes_to_int8_and_serves_all_three_outputs(sparse_models):
    """--optimize O2 --dtype int8: the quantizer takes the fused graph (it stopped at the first fused
    node before) and the int8 model's outputs stay close to the fp32 one's."""
    _, _, server = sparse_models
    with Client(server.address) as c:
        ref = c.encode(TEXTS, model="bge-m3", sparse=True, multi_vector=True)
        got = c.encode(TEXTS, model="bge-m3-fused-int8", sparse=True, multi_vector=True)
    cos = _cos(got.dense, ref.dense)
    print(f"bge-m3 fused int8 dense min cosine {cos.min():.5f}")
    assert cos.min() > 0.99
    for a, b in zip(got.multi_vector, ref.multi_vector, strict=True):
        assert a.shape == b.shape
    assert len(got.sparse) == len(TEXTS)


def test_dense_only_calls_on_a_sparse_only_model_say_what_to_do(sparse_models, tmp_path):
    """Client.embed and `ember embed` on SPLADE: one clear line each, no traceback."""
    import subprocess
    import sys

    _, _, server = sparse_models
    with Client(server.address) as c, pytest.raises(ValueError, match="no dense vectors.*encode"):
        c.embed(["a text"], model="splade")
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    r = subprocess.run([sys.executable, "-m", "ember", "embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"),
                        "--server", server.address, "--model", "splade", "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("ember embed: --model: splade has no dense vectors (its outputs: sparse); ember embed "
                                "writes dense vectors: choose an embedding model that has them")


def test_an_interactive_stream_mixes_outputs_and_encodings_message_by_message(sparse_models):
    """EmbedStream driven one message at a time, each asking for other outputs / encodings; a bad
    message (INT8 for multi-vectors) ends the stream naming it, after every earlier answer."""
    from test_streams import Interactive

    _, _, server = sparse_models
    with Client(server.address) as c:
        ref = c.encode(TEXTS[:2], model="bge-m3", sparse=True, multi_vector=True)
    s = Interactive(server.embedder.EmbedStream)
    asks = [([pb.EMBED_OUTPUT_SPARSE], pb.ENCODING_FLOAT), ([pb.EMBED_OUTPUT_DENSE], pb.ENCODING_UBINARY),
            ([pb.EMBED_OUTPUT_MULTI_VECTOR], pb.ENCODING_FLOAT16), (ALL, pb.ENCODING_FLOAT32_BYTES)]
    for r in range(12):
        outputs, encoding = asks[r % len(asks)]
        resp = s.round_trip(pb.EmbedRequest(model="bge-m3", inputs=TEXTS[:2], outputs=outputs, encoding=encoding,
                                            request_id=f"m{r}"))
        assert isinstance(resp, pb.EmbedResponse) and resp.request_id == f"m{r}", resp
        e = resp.embeddings[1]
        if pb.EMBED_OUTPUT_SPARSE in outputs:
            assert list(e.sparse.indices) == ref.sparse.indices[1].tolist()
        if outputs == [pb.EMBED_OUTPUT_DENSE]:
            assert e.packed == np.packbits(ref.dense[1] > 0).tobytes()
        if pb.EMBED_OUTPUT_MULTI_VECTOR in outputs:
            dtype = "<f2" if encoding == pb.ENCODING_FLOAT16 else "<f4"
            got = np.frombuffer(e.multi_vector.packed, dtype).reshape(e.multi_vector.rows, -1)
            np.testing.assert_allclose(got.astype(np.float32), ref.multi_vector[1], atol=1e-3)
    err = s.round_trip(pb.EmbedRequest(model="bge-m3", inputs=["x"], outputs=[pb.EMBED_OUTPUT_MULTI_VECTOR],
                                       encoding=pb.ENCODING_INT8, request_id="bad"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id=bad" in err.details()
    assert "encoding:" in err.details()
