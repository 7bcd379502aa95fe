"""Compact encodings: retrieval quality and stream speed through the server, in one run.

    python benchmarks/encodings.py [--speed-texts 2048] [--rounds 3]

all-MiniLM-L6-v2 (fp32) served by one `ember serve` process. Its int8 ranges come from
`ember calibrate` on 1,000 SciFact documents. For each encoding (float32, float16, int8, binary)
the SciFact corpus (5,183 documents, title + " " + text, as MTEB embeds them) is streamed through
EmbedStream and the 300 test queries through Embed, each in that encoding. Retrieval is
exhaustive: dot product for float32/float16, cosine over the int8 values, Hamming distance over
the binary bits; "binary + rescore" takes the 100 nearest by Hamming distance and orders them by
the float32 query against the documents' bits as ±1 (no float vectors kept). nDCG@10 on the test
qrels (binary relevance, a document with the query's own id left out, as BEIR does).

Speed: EmbedStream texts/s over the first --speed-texts documents, float32 bytes against binary,
alternating for --rounds rounds. Writes benchmarks/out/encodings.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import OUT, EmberProcess, cpu_description, export_models  # noqa: E402
from corpus import SCIFACT  # noqa: E402

from ember_client import Client  # noqa: E402

ENCODINGS = ("float32", "float16", "int8", "ubinary")
BYTES = {"float32": 1536, "float16": 768, "int8": 384, "ubinary": 48}
RESCORE = 100


def scifact():
    docs = [json.loads(line) for line in open(SCIFACT / "corpus.jsonl", encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(SCIFACT / "queries.jsonl", encoding="utf-8"))}
    qrels: dict[str, set[str]] = {}
    for line in list(open(SCIFACT / "qrels" / "test.tsv", encoding="utf-8"))[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    qids = sorted(qrels, key=int)
    return ([d["_id"] for d in docs], [(d["title"] + " " + d["text"]).strip() for d in docs], qids,
            [queries[q] for q in qids], qrels)


def ndcg10(scores: np.ndarray, doc_ids: list[str], qids: list[str], qrels: dict[str, set[str]]) -> float:
    """Mean nDCG@10 of a [queries, documents] score matrix (higher = better)."""
    index = {d: i for i, d in enumerate(doc_ids)}
    total = 0.0
    for q, qid in enumerate(qids):
        row = scores[q].astype(np.float64).copy()
        if qid in index:
            row[index[qid]] = -np.inf
        top = np.argsort(-row, kind="stable")[:10]
        rel = qrels[qid]
        dcg = sum(1.0 / np.log2(r + 2) for r, d in enumerate(top) if doc_ids[d] in rel)
        ideal = sum(1.0 / np.log2(r + 2) for r in range(min(len(rel), 10)))
        total += dcg / ideal
    return total / len(qids)


def hamming(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """[Q, D] Hamming distances between packed bit rows."""
    pop = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int32)
    return np.stack([pop[np.bitwise_xor(row, d)].sum(1) for row in q])


def scores_of(encoding: str, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    if encoding == "ubinary":
        return -hamming(q, d).astype(np.float32)
    q, d = q.astype(np.float32), d.astype(np.float32)
    if encoding == "int8":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return q @ d.T


def rescored(q_float: np.ndarray, q_bits: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """The RESCORE nearest by Hamming distance, ordered by q_float · (doc bits as ±1); others -inf."""
    near = np.argsort(hamming(q_bits, d_bits), axis=1, kind="stable")[:, :RESCORE]
    signs = np.unpackbits(d_bits, axis=1)[:, :q_float.shape[1]].astype(np.float32) * 2 - 1
    out = np.full((len(q_float), len(d_bits)), -np.inf, dtype=np.float32)
    for i, cand in enumerate(near):
        out[i, cand] = signs[cand] @ q_float[i]
    return out


def stream_rate(client: Client, texts: list[str], encoding: str) -> float:
    t0 = time.perf_counter()
    n = sum(len(a) for a in client.embed_stream(texts, batch_size=32, encoding=encoding, input_type="document"))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-texts", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=50071)
    args = ap.parse_args()
    doc_ids, docs, qids, queries, qrels = scifact()
    with tempfile.TemporaryDirectory(prefix="ember-encodings-") as tmp:
        model = export_models(Path(tmp), ("fp32",))["fp32"]
        sample = Path(tmp) / "sample.txt"
        sample.write_text("\n".join(d.replace("\n", " ") for d in docs[:1000]) + "\n")
        subprocess.run([sys.executable, "-m", "ember", "calibrate", str(model), "--texts", str(sample)], check=True)
        server = EmberProcess(model.parent, args.port, [])
        try:
            quality, rates = {}, {}
            with Client(server.address) as c:
                vectors = {}
                for enc in ENCODINGS:
                    t0 = time.perf_counter()
                    d = np.concatenate(list(c.embed_stream(docs, batch_size=32, encoding=enc, input_type="document")))
                    elapsed = time.perf_counter() - t0
                    q = c.embed(queries, encoding=enc, input_type="query")
                    vectors[enc] = (q, d)
                    quality[enc] = {"ndcg_at_10": ndcg10(scores_of(enc, q, d), doc_ids, qids, qrels),
                                    "bytes_per_vector": int(d.shape[1] * d.itemsize),
                                    "corpus_stream_texts_per_s": len(docs) / elapsed}
                    print(f"{enc:>9}: nDCG@10 {quality[enc]['ndcg_at_10']:.4f}, {d.shape[1] * d.itemsize} "
                          f"bytes/vector, corpus streamed at {len(docs) / elapsed:.0f} texts/s", flush=True)
                q_bits, d_bits = vectors["ubinary"]
                score = ndcg10(rescored(vectors["float32"][0], q_bits, d_bits), doc_ids, qids, qrels)
                quality["ubinary+rescore"] = {"ndcg_at_10": score, "bytes_per_vector": 48}
                print(f"binary + rescore top {RESCORE}: nDCG@10 {score:.4f}", flush=True)
                texts = docs[:args.speed_texts]
                stream_rate(c, texts[:256], "float32")  # warm
                for r in range(args.rounds):
                    for enc in (("float32", "ubinary") if r % 2 == 0 else ("ubinary", "float32")):
                        rates.setdefault(enc, []).append(stream_rate(c, texts, enc))
                    print(f"round {r + 1}: float32 {rates['float32'][-1]:.1f}, binary {rates['ubinary'][-1]:.1f} "
                          "texts/s", flush=True)
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"EmbedStream, {len(texts)} SciFact documents: float32 {med['float32']:.1f} texts/s, binary "
          f"{med['ubinary']:.1f} ({med['ubinary'] / med['float32']:.3f}x)")
    OUT.mkdir(exist_ok=True)
    (OUT / "encodings.json").write_text(json.dumps({
        "machine": cpu_description(), "model": "all-MiniLM-L6-v2 fp32", "queries": len(qids), "documents": len(docs),
        "calibration": "ember calibrate on the first 1,000 SciFact documents", "quality": quality,
        "speed": {"texts": len(texts), "rounds": rates, "median_texts_per_s": med}}, indent=1))


if __name__ == "__main__":
    main()
