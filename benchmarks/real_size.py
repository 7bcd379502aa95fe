"""The seed families at their real size on this machine's CPU: export, files, load, memory, speed.

    python benchmarks/real_size.py [--families all] [--dtypes fp32,int8] [--lengths 32,512,2048,8192]

Random-weight models with the published configurations of Qwen3-Embedding-0.6B, Qwen3-Reranker-0.6B,
BGE-M3 (XLM-R large with its sparse and ColBERT heads), bge-reranker-v2-m3 and EmbeddingGemma-300m,
built by tests/families.py's builders (the real files' layout, small stand-in tokenizers: the real
ones cannot be fetched here; the embedding tables have the real vocabulary sizes). Speed and memory
do not depend on the weights. For each family and dtype: `ember export` (timed, as a process), the
files it wrote and their sizes, `ember serve` on that model alone (time to SERVING, RSS after load
and its peak after the runs), then per input length one call over gRPC: Embed of 64 / 16 / 4 / 1
texts of about 32 / 512 / 2,048 / 8,192 tokens (and, asked for, one of 32,768: Qwen3's whole context,
which needs `--export-args "--optimize O2 --max-tokens 32768"`; Rerank: that many documents with a short query),
texts/s and tokens/s (tokens as the server counts them), up to the model's max tokens (Qwen3
exported with --max-tokens 8192). int8 against fp32 on the same inputs: the speed-up and the
agreement (embeddings: cosine; rerankers: |Δ score| and Spearman). Writes out/real_size.json after
every arm, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import families  # noqa: E402
from bench import OUT, EmberProcess, cpu_description, rss_mb  # noqa: E402

from ember.v1 import ember_pb2 as pb  # noqa: E402
from ember.v1 import ember_pb2_grpc as pb_grpc  # noqa: E402

QWEN3_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6)
XLMR_LARGE = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=8194)
GEMMA_300M = dict(vocab_size=262144, hidden_size=768, intermediate_size=1152, num_hidden_layers=24,
                  num_attention_heads=3, num_key_value_heads=1, head_dim=256, max_position_embeddings=2048,
                  query_pre_attn_scalar=256, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                  layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(24)])
FAMILIES = {  # name: (builder, task, builder keywords, export options)
    "qwen3-embedding-0.6b": (families.build_qwen3_embedding, "embed", QWEN3_06B, ["--max-tokens", "8192"]),
    "qwen3-reranker-0.6b": (families.build_qwen3_reranker, "rerank", QWEN3_06B, ["--max-tokens", "8192"]),
    "bge-m3": (families.build_bge_m3, "embed", XLMR_LARGE, []),
    "bge-reranker-v2-m3": (families.build_bge_reranker, "rerank", XLMR_LARGE, []),
    "embeddinggemma-300m": (families.build_embeddinggemma, "embed", {**GEMMA_300M, "sliding_window": 512,
                                                                      "dense": 3072}, []),
}
COUNT = {32: 64, 512: 16, 2048: 4, 8192: 1, 32768: 1}
SERVE = ["--default-deadline-seconds", "36000", "--max-request-chars", "20000000", "--cache-bytes", "0"]
WORDS = " ".join(families.CORPUS).split()


def texts_of(stub, model: str, tokens: int, n: int) -> list[str]:
    """n distinct texts of about `tokens` tokens each for `model` (counted by its Tokenize)."""
    words = max(1, tokens // 2)
    for _ in range(4):
        probe = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(words))
        got = stub.Tokenize(pb.TokenizeRequest(model=model, inputs=[probe], truncate=True), timeout=60).inputs[0]
        words = max(1, int(words * tokens / max(got.tokens, 1)))
    return [f"{i} " + " ".join(WORDS[(i + j * 7) % len(WORDS)] for j in range(words)) for i in range(n)]


def call(server: EmberProcess, task: str, model: str, texts: list[str]):
    """(seconds, tokens, result) of one Embed (result: vectors) or Rerank (result: scores) call."""
    ch = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 256 << 20)])
    t0 = time.perf_counter()
    if task == "embed":
        r = pb_grpc.EmbedderStub(ch).Embed(pb.EmbedRequest(model=model, inputs=texts,
                                                            encoding=pb.ENCODING_FLOAT32_BYTES), timeout=36000)
        out = np.stack([np.frombuffer(e.packed, "<f4") for e in r.embeddings])
    else:
        r = pb_grpc.RerankerStub(ch).Rerank(pb.RerankRequest(model=model, query="what is this passage about?",
                                                              documents=texts, raw_scores=True), timeout=36000)
        out = np.empty(len(texts), dtype=np.float64)
        for x in r.results:
            out[x.index] = x.score
    elapsed = time.perf_counter() - t0
    ch.close()
    return elapsed, r.usage.total_tokens, out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="all", help=f"comma-separated, of {', '.join(FAMILIES)}")
    ap.add_argument("--dtypes", default="fp32,int8")
    ap.add_argument("--lengths", default="32,512,2048,8192")
    ap.add_argument("--port", type=int, default=50081)
    ap.add_argument("--work", default="", help="a directory to keep the sources and exports in (default: a temp one)")
    ap.add_argument("--export-args", default="", help="more `ember export` options, e.g. '--optimize O2' (attention "
                                                      "fusion for the Optimum-exported encoders)")
    ap.add_argument("--out", default="real_size.json", help="the file written under benchmarks/out")
    args = ap.parse_args()
    names = list(FAMILIES) if args.families == "all" else args.families.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    OUT.mkdir(exist_ok=True)
    report = {"machine": cpu_description(), "export_args": args.export_args, "results": {}}
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ember-real-size-")
    root = Path(args.work or tmp.name)
    try:
        for name in names:
            build, task, config, export_opts = FAMILIES[name]
            src = root / "src" / name
            if not (src / "config.json").is_file():
                print(f"{name}: building the random-weight model", flush=True)
                build(src, **config)
            kept: dict = {}
            for dtype in args.dtypes.split(","):
                arm = report["results"].setdefault(name, {}).setdefault(dtype, {})
                models = root / f"models-{dtype}"
                out = models / name
                if not (out / "ember.json").is_file():
                    t0 = time.perf_counter()
                    r = subprocess.run([sys.executable, "-m", "ember", "export", str(src), str(out), "--task", task,
                                        "--dtype", dtype, *export_opts, *args.export_args.split()],
                                       capture_output=True, text=True)
                    if r.returncode:
                        arm["error"] = "export: " + r.stderr.strip().splitlines()[-1][:500]
                        print(f"{name} {dtype}: {arm['error']}", flush=True)
                        continue
                    arm["export_s"] = round(time.perf_counter() - t0, 1)
                arm["files_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(out.iterdir())}
                manifest = json.loads((out / "ember.json").read_text())
                print(f"{name} {dtype}: exported in {arm.get('export_s', '-')} s, files {arm['files_mb']}", flush=True)
                server = EmberProcess(models, args.port, ["--models", name, *SERVE])
                try:
                    arm["load_to_serving_s"] = round(server.cold_start_s, 2)
                    arm["rss_after_load_mb"] = round(rss_mb(server.proc.pid))
                    ch = grpc.insecure_channel(server.address)
                    stub = pb_grpc.ModelsStub(ch)
                    for length in [x for x in lengths if x <= manifest["max_tokens"]]:
                        texts = kept.get(length) or texts_of(stub, name, length, COUNT[length])
                        kept[length] = texts
                        if length <= 512:
                            call(server, task, name, texts[:2])  # this shape's first run
                        seconds, tokens, result = call(server, task, name, texts)
                        row = {"texts": len(texts), "tokens": tokens, "seconds": round(seconds, 3),
                               "texts_per_s": round(len(texts) / seconds, 2), "tokens_per_s": round(tokens / seconds)}
                        ref = kept.get(("result", length))
                        if ref is None:
                            kept[("result", length)] = result
                        elif task == "embed":
                            cos = (ref * result).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(result, axis=1)
                            row["cosine_vs_first_dtype"] = [round(float(cos.min()), 5), round(float(cos.mean()), 5)]
                        else:
                            row["max_abs_delta_vs_first_dtype"] = round(float(np.abs(ref - result).max()), 4)
                            row["spearman_vs_first_dtype"] = round(spearman(ref, result), 4)
                        arm[f"len_{length}"] = row
                        print(f"  {length:>5} tokens: {row}", flush=True)
                        arm["rss_peak_mb"] = round(rss_mb(server.proc.pid, "VmHWM"))
                        (OUT / args.out).write_text(json.dumps(report, indent=1))
                    ch.close()
                except Exception as e:  # noqa: BLE001 - keep the other arms; say what broke
                    arm["error"] = f"{type(e).__name__}: {e}"[:500]
                    print(f"  failed: {arm['error']}", flush=True)
                finally:
                    server.stop()
                (OUT / args.out).write_text(json.dumps(report, indent=1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
