"""`make gpu-check`'s CPU dry run: the same steps as on a GPU machine, on the CPU, with its JSON and
summary saying what ran and what was skipped."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_runs_every_step_and_says_what_it_skipped():
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--providers", "cpu"], capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((ROOT / "benchmarks/out/gpu-check.json").read_text())
    summary = (ROOT / "benchmarks/out/gpu-check.txt").read_text()
    assert report["dry_run"] is True and summary.startswith("gpu-check (CPU dry run)")
    tests = report["steps"]["tests/test_gpu.py"]
    assert tests["exit"] == 0 and tests["passed"] > 0
    bench = report["steps"]["benchmarks/gpu_bench.py"]
    (row,) = bench["results"]
    assert (row["model"], row["provider"], row["dtype"]) == ("minilm", "cpu", "fp32") and row["texts_per_s"] > 0
    assert any("TensorRT, CUDA and fp16" in s for s in report["skipped"])
    assert "skipped:" in summary and "minilm cpu fp32" in summary
