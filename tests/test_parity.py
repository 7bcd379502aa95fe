"""ember's numbers against the reference implementations, on the same inputs."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import embed, minilm_dir, real_texts, stsb_rows
from ember.v1 import ember_pb2 as pb

PUBLISHED_STSB_SPEARMAN = 0.8203


def packed(resp) -> np.ndarray:
    return np.stack([np.frombuffer(e.packed, dtype="<f4") for e in resp.embeddings])


def embed_all(server, texts, chunk=64):
    return np.concatenate([
        packed(embed(server, texts[i:i + chunk], encoding=pb.ENCODING_FLOAT32_BYTES))
        for i in range(0, len(texts), chunk)])


def test_minilm_matches_sentence_transformers(minilm_server):
    from sentence_transformers import SentenceTransformer

    texts = real_texts()
    assert len(texts) >= 240
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    lengths = [len(st.tokenizer(t)["input_ids"]) for t in texts]
    assert sum(n > 128 for n in lengths) >= 30 and sum(n > 256 for n in lengths) >= 10
    ref = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    ours = embed_all(minilm_server, texts)
    cos = (ours * ref).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"\nall-MiniLM-L6-v2 parity on {len(texts)} texts: min cosine {cos.min():.7f}, mean {cos.mean():.7f}")
    assert cos.min() >= 0.9999, f"worst text {int(cos.argmin())}: cosine {cos.min()}"


def test_stsb_spearman_through_the_server(minilm_server):
    rows = stsb_rows()
    assert len(rows) == 1379
    a = embed_all(minilm_server, [r[0] for r in rows])
    b = embed_all(minilm_server, [r[1] for r in rows])
    cos = (a * b).sum(axis=1)
    rho = spearmanr(cos, [r[2] for r in rows]).statistic
    print(f"\nSTS-B test Spearman through ember: {rho:.5f} (published {PUBLISHED_STSB_SPEARMAN})")
    assert abs(rho - PUBLISHED_STSB_SPEARMAN) <= 0.002


def test_cross_encoder_matches_transformers(tiny_server, hf_sources):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = hf_sources["rerank"]
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    query = "what do cats eat"
    docs = ["cats", "Cats are obligate carnivores and eat meat.", "A man is playing a guitar on stage tonight.",
            "word " * 200, "dogs eat too"]
    with torch.no_grad():
        enc = tok([query] * len(docs), docs, padding=True, truncation=True, max_length=128, return_tensors="pt")
        ref = model(**enc).logits[:, 0].numpy()
    r = tiny_server.reranker.Rerank(pb.RerankRequest(model="tiny-rerank", query=query, documents=docs,
                                                     raw_scores=True))
    ours = np.zeros(len(docs), dtype=np.float32)
    for x in r.results:
        ours[x.index] = x.score
    print(f"\ncross-encoder max |Δ| vs transformers: {np.abs(ours - ref).max():.2e}")
    assert np.abs(ours - ref).max() <= 1e-4
    assert r.results[0].index == int(np.argmax(ref))
    sig = tiny_server.reranker.Rerank(pb.RerankRequest(model="tiny-rerank", query=query, documents=docs))
    for x in sig.results:
        assert x.score == pytest.approx(1 / (1 + np.exp(-ref[x.index])), abs=1e-4)


def test_embedded_default_serves_rerank_by_cosine(minilm_server):
    docs = ["The weather is sunny today.", "A cat is sleeping on the sofa.", "Stock markets fell sharply."]
    r = minilm_server.reranker.Rerank(pb.RerankRequest(query="Where is the kitten resting?", documents=docs,
                                                       return_documents=True))
    assert r.model == "all-MiniLM-L6-v2"
    assert r.results[0].index == 1 and r.results[0].document == docs[1]
    assert r.results[0].score > r.results[1].score > -1.0
