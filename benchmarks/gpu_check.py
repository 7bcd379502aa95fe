"""`make gpu-check`: everything ember knows how to check on an NVIDIA GPU, in one command, with one
JSON and a short text summary that says plainly what ran and what was skipped.

    python benchmarks/gpu_check.py                   # on a GPU machine (under 8 minutes on an H100/H200)
    python benchmarks/gpu_check.py --providers cpu   # the dry run: the same steps on the CPU

Steps:
1. The GPU: `nvidia-smi`'s name, driver and memory (none: the GPU steps are skipped, and said so).
2. The gpu extra: `onnxruntime-gpu` in place of `onnxruntime` (as `pip install 'ember[gpu]'` and
   the CUDA image do) unless it is already there; a machine that cannot reach a package index
   keeps what it has, and the summary says so.
3. `tests/test_gpu.py` (fp16 parity, provider reporting, pinned buffers, TensorRT's cache, which
   provider the fused Qwen3 graph's GroupQueryAttention runs on), with pytest's own count of what
   passed, failed and was skipped.
4. `benchmarks/gpu_bench.py --quick`: all-MiniLM-L6-v2, a BERT-base shape and XLM-R-large (BGE-M3's
   shape), fp32 and fp16, on the TensorRT and CUDA providers (the dry run: MiniLM, fp32, CPU).

Writes benchmarks/out/gpu-check.json and benchmarks/out/gpu-check.txt; exits 1 if a step failed.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def run(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return r.returncode, r.stdout + r.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f} s)", time.monotonic() - t0


def gpu_facts() -> dict:
    code, out, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30) \
        if _has("nvidia-smi") else (127, "", 0.0)
    if code != 0 or not out.strip():
        return {}
    name, driver, memory = (p.strip() for p in out.strip().splitlines()[0].split(","))
    return {"name": name, "driver": driver, "memory": memory}


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def ensure_gpu_runtime() -> dict:
    """onnxruntime-gpu in place of onnxruntime, if it is not there yet."""
    import importlib.metadata as md

    def installed(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    if installed("onnxruntime-gpu"):
        return {"status": "present", "onnxruntime-gpu": installed("onnxruntime-gpu")}
    code, out, secs = run([sys.executable, "-m", "pip", "install", "-q", "onnxruntime-gpu>=1.18"], 300)
    if code != 0:
        return {"status": "not installed (no package index reachable?)", "detail": out[-500:]}
    run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], 120)
    run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", "onnxruntime-gpu>=1.18"], 300)
    return {"status": "installed", "onnxruntime-gpu": installed("onnxruntime-gpu"), "seconds": round(secs, 1)}


def pytest_counts(out: str) -> dict:
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    skipped = re.findall(r"^SKIPPED \[\d+\] (.*)$", out, re.M)
    return {**counts, "skip_reasons": sorted(set(skipped))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="", help="cpu: the dry run (default: tensorrt,cuda)")
    ap.add_argument("--bench-models", default="", help="gpu_bench.py --models (default: minilm,bert-base,xlmr-large; "
                                                       "the dry run: minilm)")
    args = ap.parse_args()
    dry = args.providers == "cpu"
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": dry, "steps": {}, "skipped": []}
    t0 = time.monotonic()

    gpu = {} if dry else gpu_facts()
    report["gpu"] = gpu
    if not gpu:
        report["skipped"].append("no NVIDIA GPU (nvidia-smi found none)" if not dry else
                                 "the GPU steps: this is the CPU dry run (--providers cpu)")
    if gpu:
        report["steps"]["gpu extra"] = ensure_gpu_runtime()
        if report["steps"]["gpu extra"]["status"].startswith("not installed"):
            report["skipped"].append("installing onnxruntime-gpu: " + report["steps"]["gpu extra"]["status"])

    code, out, secs = run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                          400)
    report["steps"]["tests/test_gpu.py"] = {"exit": code, "seconds": round(secs, 1), **pytest_counts(out)}
    if report["steps"]["tests/test_gpu.py"].get("skipped"):
        report["skipped"].append(f"{report['steps']['tests/test_gpu.py']['skipped']} GPU tests skipped: "
                                 + "; ".join(report["steps"]["tests/test_gpu.py"]["skip_reasons"])[:300])

    providers = "cpu" if dry else (args.providers or "tensorrt,cuda")
    models = args.bench_models or ("minilm" if dry else "minilm,bert-base,xlmr-large")
    dtypes = "fp32" if dry else "fp32,fp16"
    code2, out2, secs2 = run([sys.executable, "benchmarks/gpu_bench.py", "--quick", "--providers", providers,
                              "--models", models, "--dtypes", dtypes], 600)
    bench: dict = {"exit": code2, "seconds": round(secs2, 1), "providers": providers, "models": models,
                   "dtypes": dtypes}
    if code2 == 0 and (OUT / "gpu.json").is_file():
        bench["results"] = json.loads((OUT / "gpu.json").read_text())["results"]
    else:
        bench["tail"] = out2[-1500:]
    report["steps"]["benchmarks/gpu_bench.py"] = bench
    if dry:
        report["skipped"].append("TensorRT, CUDA and fp16 (the CPU dry run measures the CPU only)")
    report["seconds"] = round(time.monotonic() - t0, 1)
    failed = code != 0 or code2 != 0

    lines = [f"gpu-check {'(CPU dry run) ' if dry else ''}{report['started']}: "
             f"{'FAILED' if failed else 'ok'} in {report['seconds']:.0f} s",
             f"GPU: {gpu.get('name', 'none')}" + (f", driver {gpu['driver']}, {gpu['memory']}" if gpu else "")]
    t = report["steps"]["tests/test_gpu.py"]
    lines.append(f"tests/test_gpu.py: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                 f"{t.get('skipped', 0)} skipped ({t['seconds']:.0f} s)")
    lines.append(f"gpu_bench.py --quick ({providers}; {models}; {dtypes}): exit {code2} ({secs2:.0f} s)")
    for r in bench.get("results", []):
        lines.append(f"  {r['model']} {r['provider']} {r['dtype']}: {r['texts_per_s']:,.0f} texts/s, "
                     f"{r['tokens_per_s']:,.0f} tokens/s, 1,000-text Embed p50 {r['ref_job_ms_p50']:.1f} ms")
    lines += [f"skipped: {s}" for s in report["skipped"]]
    summary = "\n".join(lines)
    print(summary)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu-check.json").write_text(json.dumps(report, indent=1))
    (OUT / "gpu-check.txt").write_text(summary + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
