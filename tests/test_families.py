"""The model families end to end: tiny random-weight models of each real architecture are built with
transformers (and sentence-transformers files where the family has them), exported by `ember
export`, served over gRPC, and compared with the reference computed in PyTorch on the same inputs —
mixed lengths in one request (padding side matters) and a long input in each.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import families
from conftest import run_export, start_server
from ember.export import ExportError, export_model
from ember.v1 import ember_pb2 as pb

SHORT = ["A man is playing a guitar.", "Is it going to rain tomorrow?", "naïve café — déjà vu 東京 😀",
         "The quick brown fox jumps over the lazy dog, twice, and then sits down on the warm window sill."]
# Words of the corpus in a seeded random order: about 1,500-2,200 tokens for these tokenizers
_WORDS = " ".join(families.CORPUS).split()
LONG = " ".join(random.Random(0).choice(_WORDS) for _ in range(600))


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    src = tmp_path_factory.mktemp("family-src")
    out = tmp_path_factory.mktemp("family-models")
    sources = {
        "qwen3-embedding": families.build_qwen3_embedding(src / "qwen3-embedding"),
        "qwen3-reranker": families.build_qwen3_reranker(src / "qwen3-reranker"),
        "bge-m3": families.build_bge_m3(src / "bge-m3"),
        "bge-reranker": families.build_bge_reranker(src / "bge-reranker"),
        "embeddinggemma": families.build_embeddinggemma(src / "embeddinggemma"),
    }
    run_export(sources["qwen3-embedding"], out / "qwen3-embedding", "embed", "--max-tokens", "32768")
    run_export(sources["qwen3-reranker"], out / "qwen3-reranker", "rerank")
    # --optimize: the decoders' attention as GroupQueryAttention (right padding)
    run_export(sources["qwen3-embedding"], out / "qwen3-embedding-fused", "embed", "--max-tokens", "32768",
               "--optimize", "O2")
    run_export(sources["qwen3-reranker"], out / "qwen3-reranker-fused", "rerank", "--optimize", "O2")
    run_export(sources["qwen3-embedding"], out / "qwen3-embedding-fused-int8", "embed", "--optimize", "O2",
               "--dtype", "int8")
    run_export(sources["bge-m3"], out / "bge-m3", "embed")
    run_export(sources["bge-reranker"], out / "bge-reranker", "rerank")
    run_export(sources["embeddinggemma"], out / "embeddinggemma", "embed", "--matryoshka-dims", "32,16,8")
    return sources, out


@pytest.fixture(scope="module")
def family_server(family_models):
    s = start_server(models_dir=str(family_models[1]), default_embed_model="bge-m3",
                     default_rerank_model="bge-reranker", max_inputs_per_request=64)
    yield s
    s.stop()


def manifest(family_models, name: str) -> dict:
    return json.loads((family_models[1] / name / "ember.json").read_text())


def embed(server, model: str, texts: list[str], **kw) -> np.ndarray:
    resp = server.embedder.Embed(pb.EmbedRequest(model=model, inputs=texts, encoding=pb.ENCODING_FLOAT32_BYTES, **kw))
    return np.stack([np.frombuffer(e.packed, dtype="<f4") for e in resp.embeddings])


def rerank_scores(server, model: str, query: str, docs: list[str], **kw) -> np.ndarray:
    resp = server.reranker.Rerank(pb.RerankRequest(model=model, query=query, documents=docs, **kw))
    out = np.empty(len(docs), dtype=np.float64)
    for r in resp.results:
        out[r.index] = r.score
    return out


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def sentence_transformer(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


# ---- what export recognised ----------------------------------------------------------------
def test_export_reads_each_family_from_its_files(family_models):
    q = manifest(family_models, "qwen3-embedding")
    assert (q["family"], q["pooling"], q["padding_side"], q["normalize"]) == ("qwen3-embedding", "last", "left", True)
    assert q["prompts"]["query"] == families.QWEN3_QUERY_PROMPT and q["query_prompt_name"] == "query"
    assert q["max_tokens"] == 32768  # --max-tokens, within the model's 32768 positions
    r = manifest(family_models, "qwen3-reranker")
    assert r["family"] == "qwen3-reranker" and r["output"] == "logits"
    assert r["rerank_template"]["body"].startswith("<Instruct>: {instruction}")
    b = manifest(family_models, "bge-m3")
    assert (b["family"], b["pooling"], b["normalize"], b["max_tokens"]) == ("bge-m3", "cls", True, 8192)
    assert b["outputs"] == ["dense", "sparse", "multi_vector"] and b["sparse_skip_ids"] == [0, 1, 2, 3]
    assert b["pad_token_id"] == 1
    g = manifest(family_models, "embeddinggemma")
    assert (g["family"], g["pooling"], g["output"], g["dimensions"]) == \
        ("embeddinggemma", "none", "sentence_embedding", 32)
    assert g["prompts"]["query"] == "task: search result | query: " and g["document_prompt_name"] == "document"


def test_qwen3_reranker_graph_never_holds_vocabulary_logits(family_models):
    import onnx

    vocab = json.loads((family_models[0]["qwen3-reranker"] / "config.json").read_text())["vocab_size"]
    graph = onnx.load(str(family_models[1] / "qwen3-reranker" / "model.onnx"))
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    for value in list(inferred.value_info) + list(inferred.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert vocab not in dims[1:], f"{value.name} has a vocabulary-sized axis {dims}"
    # the lm_head survives only as the yes−no direction: no [vocab, hidden] initializer besides the embeddings
    big = [i.name for i in graph.graph.initializer if vocab in i.dims]
    assert len(big) <= 1, big  # the input embedding table


def test_fused_decoder_graphs_have_one_group_query_attention_per_layer(family_models):
    """--optimize on Qwen3: no [heads, length, length] scores tensor (no Softmax), one fused node per
    layer, and right padding, which GroupQueryAttention reads each row's length by."""
    import onnx

    for name in ("qwen3-embedding-fused", "qwen3-reranker-fused", "qwen3-embedding-fused-int8"):
        m = manifest(family_models, name)
        layers = json.loads((family_models[0][name.split("-fused")[0]] / "config.json").read_text())[
            "num_hidden_layers"]
        ops = [n.op_type for n in onnx.load(str(family_models[1] / name / m["onnx_file"])).graph.node]
        assert ops.count("GroupQueryAttention") == layers and "Softmax" not in ops, name
        assert (m["padding_side"], m["optimize"]) == ("right", "O2"), name
    ops = [n.op_type for n in onnx.load(str(family_models[1] / "qwen3-embedding" / "model.onnx")).graph.node]
    assert "GroupQueryAttention" not in ops and "Softmax" in ops  # the default graph stays plain
    # a row with no real token (an empty text where the tokenizer adds none) runs, as in the plain graph
    import onnxruntime as ort

    sess = ort.InferenceSession(str(family_models[1] / "qwen3-embedding-fused" / "model.onnx"))
    out = sess.run(None, {"input_ids": np.array([[5, 6, 7], [0, 0, 0]]),
                          "attention_mask": np.array([[1, 1, 1], [0, 0, 0]])})[0]
    assert out.shape[:2] == (2, 3) and np.isfinite(out).all()


def test_optimize_names_the_families_it_is_for(family_models, tmp_path):
    with pytest.raises(ExportError, match="--optimize is for the encoders .* and the Qwen3 decoders, not the "
                                          "embeddinggemma graph"):
        export_model(family_models[0]["embeddinggemma"], tmp_path / "g", "embed", optimize="O2")


def test_embeddinggemma_refuses_float16_with_the_reason(family_models, tmp_path):
    with pytest.raises(ExportError, match="EmbeddingGemma cannot run in float16"):
        export_model(family_models[0]["embeddinggemma"], tmp_path / "g16", "embed", dtype="fp16")


# ---- parity with the references ------------------------------------------------------------
@pytest.mark.parametrize("model", ["qwen3-embedding", "qwen3-embedding-fused"])
def test_qwen3_embedding_matches_sentence_transformers(family_models, family_server, model):
    """The plain graph and the fused one (--optimize: GroupQueryAttention, right padding) alike."""
    st = sentence_transformer(family_models[0]["qwen3-embedding"])
    texts = SHORT + [LONG]
    ref_q = st.encode(texts, prompt_name="query", batch_size=8)
    ref_d = st.encode(texts, prompt_name="document", batch_size=8)
    got_q = embed(family_server, model, texts, input_type=pb.INPUT_TYPE_QUERY)
    got_d = embed(family_server, model, texts, input_type=pb.INPUT_TYPE_DOCUMENT)
    print(f"{model} min cosine: query {min_cosine(got_q, ref_q):.7f}, document {min_cosine(got_d, ref_d):.7f}")
    assert min_cosine(got_q, ref_q) >= 0.9999 and min_cosine(got_d, ref_d) >= 0.9999
    assert min_cosine(got_q, got_d) < 0.9999  # the instruction really was applied to queries only
    # Matryoshka: any size up to the full one; same as truncating the reference and renormalizing
    got16 = embed(family_server, model, texts, input_type=pb.INPUT_TYPE_QUERY, dimensions=16)
    assert got16.shape == (len(texts), 16) and min_cosine(got16, ref_q[:, :16]) >= 0.9999


@pytest.mark.parametrize("model", ["qwen3-embedding", "qwen3-embedding-fused"])
def test_qwen3_embedding_alone_and_in_a_batch_agree(family_server, model):
    """Left padding (plain) or right (fused): a text padded next to a long one gives the vector it gives alone."""
    batch = embed(family_server, model, SHORT + [LONG])
    alone = np.concatenate([embed(family_server, model, [t]) for t in SHORT])
    assert min_cosine(batch[:len(SHORT)], alone) >= 0.9999


def test_fused_int8_qwen3_embedding_agrees_with_fp32(family_server):
    texts = SHORT + [LONG]
    ref = embed(family_server, "qwen3-embedding", texts)
    got = embed(family_server, "qwen3-embedding-fused-int8", texts)
    print(f"fused int8 qwen3-embedding min cosine {min_cosine(got, ref):.5f}")
    assert min_cosine(got, ref) >= 0.99


def _qwen3_reranker_reference(src, query: str, docs: list[str], instruction: str | None = None) -> np.ndarray:
    """The model card's scoring code: left padding, P(yes) from the yes/no logits at the last position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ember.families import QWEN3_RERANK_TEMPLATE as T

    tok = AutoTokenizer.from_pretrained(str(src), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    prefix = tok.encode(T["prefix"], add_special_tokens=False)
    suffix = tok.encode(T["suffix"], add_special_tokens=False)
    pairs = [T["body"].format(instruction=instruction or T["instruction"], query=query, document=d) for d in docs]
    enc = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
              max_length=8192 - len(prefix) - len(suffix))
    enc["input_ids"] = [prefix + ids + suffix for ids in enc["input_ids"]]
    enc = tok.pad(enc, padding=True, return_tensors="pt")
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    with torch.no_grad():
        last = model(**enc).logits[:, -1, :]
    scores = torch.nn.functional.log_softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)[:, 1].exp()
    return scores.numpy().astype(np.float64)


@pytest.mark.parametrize("model", ["qwen3-reranker", "qwen3-reranker-fused"])
def test_qwen3_reranker_matches_the_model_cards_scoring(family_models, family_server, model):
    src = family_models[0]["qwen3-reranker"]
    query, docs = "Is it going to rain?", SHORT + [LONG[:3000]]
    ref = _qwen3_reranker_reference(src, query, docs)
    got = rerank_scores(family_server, model, query, docs)
    print(f"{model} max |Δ| {np.abs(got - ref).max():.2e}")
    assert np.abs(got - ref).max() <= 1e-4
    inst = "Judge whether the passage is about the weather"
    ref_i = _qwen3_reranker_reference(src, query, docs, inst)
    got_i = rerank_scores(family_server, model, query, docs, instruction=inst)
    assert np.abs(got_i - ref_i).max() <= 1e-4 and np.abs(ref_i - ref).max() > 1e-4
    raw = rerank_scores(family_server, model, query, docs, raw_scores=True)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), got, atol=1e-6)  # raw = logit(yes) − logit(no)


def test_bge_m3_matches_sentence_transformers(family_models, family_server):
    st = sentence_transformer(family_models[0]["bge-m3"])
    texts = SHORT + [LONG]
    ref = st.encode(texts, batch_size=8)
    got = embed(family_server, "bge-m3", texts)
    print(f"bge-m3 min cosine {min_cosine(got, ref):.7f}")
    assert min_cosine(got, ref) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bge_reranker_matches_transformers(family_models, family_server):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = family_models[0]["bge-reranker"]
    query, docs = "Is it going to rain?", SHORT + [LONG[:4000]]
    tok = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
    enc = tok([query] * len(docs), docs, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[:, 0].numpy().astype(np.float64)
    raw = rerank_scores(family_server, "bge-reranker", query, docs, raw_scores=True)
    got = rerank_scores(family_server, "bge-reranker", query, docs)
    print(f"bge-reranker max |Δ| logits {np.abs(raw - logits).max():.2e}")
    assert np.abs(raw - logits).max() <= 1e-4
    assert np.abs(got - 1 / (1 + np.exp(-logits))).max() <= 1e-4


def test_embeddinggemma_matches_sentence_transformers(family_models, family_server):
    st = sentence_transformer(family_models[0]["embeddinggemma"])
    texts = SHORT + [LONG[:1500]]  # longer than the sliding window (16 tokens here) and mixed lengths
    for input_type, prompt in ((pb.INPUT_TYPE_QUERY, "query"), (pb.INPUT_TYPE_DOCUMENT, "document")):
        ref = st.encode(texts, prompt_name=prompt, batch_size=8)
        got = embed(family_server, "embeddinggemma", texts, input_type=input_type)
        print(f"embeddinggemma {prompt} min cosine {min_cosine(got, ref):.7f}")
        assert min_cosine(got, ref) >= 0.9999
    ref_sts = st.encode(texts, prompt_name="STS", batch_size=8)
    assert min_cosine(embed(family_server, "embeddinggemma", texts, prompt_name="STS"), ref_sts) >= 0.9999
    ref16 = st.encode(texts, prompt_name="query", batch_size=8, truncate_dim=16)
    got16 = embed(family_server, "embeddinggemma", texts, input_type=pb.INPUT_TYPE_QUERY, dimensions=16)
    assert got16.shape == (len(texts), 16) and min_cosine(got16, ref16) >= 0.9999


def test_long_inputs_do_not_pad_short_ones(family_server):
    """Token-budget batching: one long input and short ones in a request run in separate batches."""
    model = family_server.server.registry.models["bge-m3"]
    real, lanes, shapes = model.scheduler.engine, model.scheduler.lanes, []

    class Recording:
        def __init__(self):
            self.manifest, self.needs_type_ids = real.manifest, real.needs_type_ids

        def infer(self, ids, mask, type_ids):
            shapes.append((ids.shape, mask.sum(axis=1).tolist()))
            return real.infer(ids, mask, type_ids)

    rec = Recording()  # on the main session and on every worker's lane
    model.scheduler.engine, model.scheduler.lanes = rec, [rec] * len(lanes)
    try:
        embed(family_server, "bge-m3", [LONG] + SHORT * 4)
    finally:
        model.scheduler.engine, model.scheduler.lanes = real, lanes
    long_batch = [s for s in shapes if max(s[1]) > 1000]
    assert len(long_batch) == 1 and long_batch[0][0][0] == 1  # the long one ran alone
    assert all(shape[1] < 100 for shape, _ in shapes if shape not in [b[0] for b in long_batch])


def test_instruction_is_refused_by_models_without_a_template_and_long_templated_documents_name_the_field(
        family_server):
    import grpc

    from test_errors import violation

    with pytest.raises(grpc.RpcError) as e:
        family_server.reranker.Rerank(pb.RerankRequest(model="bge-reranker", query="q", documents=["d"],
                                                       instruction="judge it"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violation(e.value)[0] == "instruction"
    with pytest.raises(grpc.RpcError) as e:
        family_server.reranker.Rerank(pb.RerankRequest(model="qwen3-reranker", query="q", documents=["d", LONG * 40],
                                                       truncate=False))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    field, why = violation(e.value)
    assert field == "documents[1]" and "prompt template" in why


def test_long_inputs_really_are_long(family_server):
    resp = family_server.models.Tokenize(pb.TokenizeRequest(model="qwen3-embedding", inputs=[LONG * 8]))
    assert resp.inputs[0].tokens > 8192 and not resp.inputs[0].truncated  # within its 32768-token limit
    resp = family_server.models.Tokenize(pb.TokenizeRequest(model="bge-m3", inputs=[LONG, LONG * 8]))
    assert resp.inputs[0].tokens > 1000 and resp.inputs[1].tokens == 8192 and resp.inputs[1].truncated
