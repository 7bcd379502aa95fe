"""What tokenizing costs: ember's compiled WordPiece path against HF tokenizers, on the bench texts.

    python benchmarks/tokenizer_cost.py

Both through `ember.tokenization.ModelTokenizer.encode` (what the server calls: ids as int64
arrays, lengths, truncation flags), with the compiled path on (the default) and off
(`--no-fast-tokenizer`), on all-MiniLM-L6-v2's tokenizer.json and bench.py's texts. Three ways:
one text per call with warm caches; one text per call right after streaming 128 MB through the
caches, as a single text is tokenized right after the previous call's ONNX Runtime run streamed
the weights; batches of 32; and a rerank request's pairs, one query and 32 documents
(`encode_pairs`, as a cross-encoder sees them). The two paths take turns by block. Prints µs per
text or pair (p50 for single texts) and the share of the texts the compiled path took (the rest
went to HF: scripts outside its table). Writes out/tokenizer_cost.json.
"""
from __future__ import annotations

import json
import time

import numpy as np
from bench import MODEL, OUT, cpu_description, export_models
from corpus import load_texts

from ember.manifest import read_manifest
from ember.tokenization import ModelTokenizer


def main() -> int:
    model_dir = export_models(OUT / "models", ("fp32",))["fp32"]
    m = read_manifest(model_dir, verify=False)
    paths = {"compiled WordPiece": ModelTokenizer(model_dir, m, with_type_ids=True),
             "HF tokenizers": ModelTokenizer(model_dir, m, with_type_ids=True, fast=False)}
    assert paths["compiled WordPiece"].fast is not None, "the model's tokenizer should take the compiled path"
    texts = load_texts()[:4096]
    taken = sum(paths["compiled WordPiece"].fast.encode_one(t, m.max_tokens, False) is not None for t in texts)
    flush = np.ones(16 << 20)  # 128 MB
    res: dict[str, dict[str, list[float]]] = {k: {"warm": [], "cold": [], "batch": [], "pairs": []} for k in paths}
    for tok in paths.values():  # warm both
        tok.encode(texts[:64], truncate=True, direction="right")
    for block in range(8):
        chunk = texts[block * 512:(block + 1) * 512]
        for name in (list(paths) if block % 2 == 0 else list(paths)[::-1]):
            enc = paths[name].encode
            for t in chunk[:128]:
                t0 = time.perf_counter_ns()
                enc([t], truncate=True, direction="right")
                res[name]["warm"].append(time.perf_counter_ns() - t0)
            for t in chunk[128:256]:
                flush.sum()
                t0 = time.perf_counter_ns()
                enc([t], truncate=True, direction="right")
                res[name]["cold"].append(time.perf_counter_ns() - t0)
            for s in range(0, len(chunk), 32):
                t0 = time.perf_counter_ns()
                enc(chunk[s:s + 32], truncate=True, direction="right")
                res[name]["batch"].append((time.perf_counter_ns() - t0) / len(chunk[s:s + 32]))
            for s in range(0, len(chunk), 32):
                t0 = time.perf_counter_ns()
                paths[name].encode_pairs(chunk[s // 32], chunk[s:s + 32], truncate=True, direction="right")
                res[name]["pairs"].append((time.perf_counter_ns() - t0) / len(chunk[s:s + 32]))
    print(f"Machine: {cpu_description()}; {MODEL}'s tokenizer.json; {len(texts)} texts, "
          f"{taken / len(texts):.1%} of them taken by the compiled path\n")
    print("| path | one text, warm, p50 (µs) | one text after 128 MB streamed, p50 (µs) | batches of 32, "
          "median per text (µs) | a query and 32 documents, median per pair (µs) |\n|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {np.median(r['warm']) / 1e3:.1f} | {np.median(r['cold']) / 1e3:.1f} | "
              f"{np.median(r['batch']) / 1e3:.1f} | {np.median(r['pairs']) / 1e3:.1f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer_cost.json").write_text(json.dumps({"taken": taken, "texts": len(texts), "ns": res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
