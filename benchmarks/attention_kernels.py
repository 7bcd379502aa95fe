"""One attention layer in ONNX Runtime on this CPU: the plain graph against its fused kernels.

    python benchmarks/attention_kernels.py [--shapes qwen3,gemma] [--lengths 512,2048,8192] [--threads 2]

Why ember writes GroupQueryAttention for the Qwen3 decoders and leaves EmbeddingGemma plain. Each
(shape, length, kernel) runs in a fresh process: a graph of one attention layer, its inputs Q, K, V
as the projections give them, [batch, length, heads × head size]:

- plain: what the exported graph does: K and V heads repeated, Q·Kᵀ, scale, + an additive mask,
  Softmax, ·V (a [batch, heads, length, length] tensor);
- gqa: com.microsoft GroupQueryAttention, causal, each row's length from `seqlens_k`;
- mha_bias: com.microsoft MultiHeadAttention with the mask as attention_bias;
- onnx_attention: ONNX's own Attention (opset 23) with the mask;
- mha_flash: MultiHeadAttention with no mask at all (ONNX Runtime's CPU flash-attention path):
  the bound for a bidirectional kernel, not a correct graph where rows are padded or windowed.

qwen3: Qwen3-0.6B's 16 query / 8 key-value heads of 128, a causal mask (gqa applies to it);
gemma: EmbeddingGemma-300m's 3 / 1 heads of 256, its bidirectional sliding window (|q − k| < 257)
as the mask (gqa does not apply: it is causal only). Batch: 8,192 tokens' worth of rows (at least
one). Prints the median of 3 runs after one warm-up, the process's peak RSS over what it held
before the first run, and the largest difference from the plain output (the masks' real rows).
Writes out/attention_kernels.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import OUT, cpu_description  # noqa: E402

SHAPES = {"qwen3": dict(heads=16, kv_heads=8, dim=128, causal=True),
          "gemma": dict(heads=3, kv_heads=1, dim=256, causal=False, window=257)}
KERNELS = {"qwen3": ("plain", "gqa", "mha_bias", "onnx_attention"),
           "gemma": ("plain", "mha_bias", "onnx_attention", "mha_flash")}


def graph(kernel: str, rows: int, heads: int, kv_heads: int, dim: int, **_):
    from onnx import TensorProto as TP
    from onnx import helper as h

    F = TP.FLOAT

    def value(name, shape, t=F):
        return h.make_tensor_value_info(name, t, shape)

    nodes, inits = [], []
    inputs = [value("q", [rows, "S", heads * dim]), value("k", [rows, "S", kv_heads * dim]),
              value("v", [rows, "S", kv_heads * dim])]

    def repeat(x: str) -> str:  # [B, S, KV·D] → [B, S, H·D], each key/value head shared by H/KV query heads
        inits.extend([h.make_tensor(x + "_5d", TP.INT64, [4], [rows, -1, kv_heads, dim]),
                      h.make_tensor(x + "_rep", TP.INT64, [5], [1, 1, 1, heads // kv_heads, 1]),
                      h.make_tensor(x + "_3d", TP.INT64, [3], [rows, -1, heads * dim]),
                      h.make_tensor(x + "_ax", TP.INT64, [1], [3])])
        nodes.extend([h.make_node("Reshape", [x, x + "_5d"], [x + "_r"]),
                      h.make_node("Unsqueeze", [x + "_r", x + "_ax"], [x + "_u"]),
                      h.make_node("Expand", [x + "_u", x + "_rep"], [x + "_e"]),
                      h.make_node("Reshape", [x + "_e", x + "_3d"], [x + "_all"])])
        return x + "_all"

    mask_input = value("mask", [1, 1, "S", "S"])
    if kernel == "plain":
        k, v = repeat("k"), repeat("v")
        inits.extend([h.make_tensor("bsnd", TP.INT64, [4], [rows, -1, heads, dim]),
                      h.make_tensor("scale", F, [], [dim ** -0.5]),
                      h.make_tensor("bsd", TP.INT64, [3], [rows, -1, heads * dim])])
        for x, name in (("q", "q4"), (k, "k4"), (v, "v4")):
            nodes.append(h.make_node("Reshape", [x, "bsnd"], [name + "r"]))
            nodes.append(h.make_node("Transpose", [name + "r"], [name], perm=[0, 2, 1, 3]))
        nodes += [h.make_node("Transpose", ["k4"], ["kT"], perm=[0, 1, 3, 2]),
                  h.make_node("MatMul", ["q4", "kT"], ["s"]), h.make_node("Mul", ["s", "scale"], ["s2"]),
                  h.make_node("Add", ["s2", "mask"], ["s3"]), h.make_node("Softmax", ["s3"], ["p"], axis=-1),
                  h.make_node("MatMul", ["p", "v4"], ["o4"]),
                  h.make_node("Transpose", ["o4"], ["o3"], perm=[0, 2, 1, 3]),
                  h.make_node("Reshape", ["o3", "bsd"], ["out"])]
        inputs.append(mask_input)
    elif kernel in ("mha_bias", "mha_flash"):
        ins = ["q", repeat("k"), repeat("v"), "", ""]
        if kernel == "mha_bias":
            ins.append("mask")
            inputs.append(mask_input)
        nodes.append(h.make_node("MultiHeadAttention", ins, ["out"], domain="com.microsoft", num_heads=heads))
    elif kernel == "gqa":
        inputs += [value("seqlens_k", [rows], TP.INT32), value("total", [], TP.INT32)]
        nodes.append(h.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens_k", "total"],
                                 ["out", "present_k", "present_v"], domain="com.microsoft", num_heads=heads,
                                 kv_num_heads=kv_heads))
    elif kernel == "onnx_attention":
        inputs.append(mask_input)
        nodes.append(h.make_node("Attention", ["q", "k", "v", "mask"], ["out"], q_num_heads=heads,
                                 kv_num_heads=kv_heads))
    model = h.make_model(h.make_graph(nodes, kernel, inputs, [value("out", [rows, "S", heads * dim])],
                                      initializer=inits),
                         opset_imports=[h.make_opsetid("", 23), h.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def one(shape: str, kernel: str, length: int, threads: int) -> dict:
    """In this (fresh) process: one kernel at one length."""
    import numpy as np
    import onnxruntime as ort

    s = SHAPES[shape]
    rows = max(1, 8192 // length)
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((rows, length, s["heads"] * s["dim"]), dtype=np.float32),
             "k": rng.standard_normal((rows, length, s["kv_heads"] * s["dim"]), dtype=np.float32),
             "v": rng.standard_normal((rows, length, s["kv_heads"] * s["dim"]), dtype=np.float32)}
    idx = np.arange(length)
    allowed = idx[None] <= idx[:, None] if s["causal"] else np.abs(idx[:, None] - idx[None]) < s["window"]
    mask = np.where(allowed, 0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    if kernel in ("plain", "mha_bias", "onnx_attention"):
        feeds["mask"] = mask
    if kernel == "gqa":
        feeds["seqlens_k"] = np.full(rows, length - 1, np.int32)
        feeds["total"] = np.array(length, np.int32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph(kernel, rows, **s).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sess.run(None, feeds)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = sess.run(None, feeds)[0]
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    OUT.mkdir(exist_ok=True)  # (a fresh clone has no benchmarks/out yet)
    np.save(OUT / f"attention-{shape}-{length}-{kernel}.npy", out[0, -16:])
    return {"rows": rows, "ms": round(1000 * sorted(times)[1], 1), "peak_added_mb": round((peak - before) / 1024)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen3,gemma")
    ap.add_argument("--lengths", default="512,2048,8192")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import numpy as np

    OUT.mkdir(exist_ok=True)
    report = {"machine": cpu_description(), "threads": args.threads, "results": []}
    print(f"Machine: {report['machine']}, {args.threads} threads\n")
    print("| shape | rows × length | kernel | ms (median of 3) | peak RSS added (MB) | max |Δ| from plain |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        for length in (int(x) for x in args.lengths.split(",")):
            for kernel in KERNELS[shape]:
                r = subprocess.run([sys.executable, __file__, "_one", shape, kernel, str(length), str(args.threads)],
                                   capture_output=True, text=True)
                if r.returncode:
                    row = {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
                else:
                    row = json.loads(r.stdout.strip().splitlines()[-1])
                    ref = OUT / f"attention-{shape}-{length}-plain.npy"
                    got = OUT / f"attention-{shape}-{length}-{kernel}.npy"
                    row["max_abs_delta"] = float(np.abs(np.load(ref) - np.load(got)).max()) if ref.is_file() else None
                row.update(shape=shape, length=length, kernel=kernel)
                report["results"].append(row)
                if "error" in row:
                    print(f"| {shape} | {length} | {kernel} | failed: {row['error']} | | |", flush=True)
                else:
                    print(f"| {shape} | {row['rows']} × {length} | {kernel} | {row['ms']} | {row['peak_added_mb']} | "
                          f"{row['max_abs_delta']:.1e} |", flush=True)
                (OUT / "attention_kernels.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        print(json.dumps(one(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        sys.exit(0)
    sys.exit(main())
