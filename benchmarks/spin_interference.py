"""How long another process's ONNX Runtime run slows this one's, with and without its spinning.

    python benchmarks/spin_interference.py

ONNX Runtime's idle intra-op threads spin for a while after a run (its default, and ember's
`--ort-spinning`). On a 2-core machine, a run in another process that starts while they spin has
a core less. For each text: raw ORT in another process (`raw_process.py`, spinning or
`--no-spinning`) runs one text, or this process ran one 0.1 s before (no other process); then,
after a gap of 0, 10, 30 or 100 ms, raw ORT in this process runs the text and is timed. Prints the
p50 per case. bench.py's single-text section waits `SETTLE_S` before each arm's turn because of
what this shows.
"""
from __future__ import annotations

import time

import numpy as np
from bench import OUT, RawOrt, RawProcess, export_models
from corpus import load_texts

GAPS_S = (0.0, 0.01, 0.03, 0.1)


def main() -> int:
    texts = load_texts()[-400:]
    model_dir = export_models(OUT / "models", ("fp32",))["fp32"]
    raw = RawOrt(model_dir)
    raw.encode(texts[:64])
    others = {"another process ran, spinning": RawProcess(model_dir),
              "another process ran, not spinning": RawProcess(model_dir, spinning=False)}
    ms: dict[tuple[str, float], list[float]] = {}
    try:
        for i, text in enumerate(texts[:300]):
            before = texts[(i + 7) % len(texts)]
            for case, other in [*others.items(), ("no other process", None)]:
                for gap in GAPS_S:
                    if other is not None:
                        other.one(before)
                    else:
                        raw.one(before)
                        time.sleep(0.1)
                    time.sleep(gap)
                    t0 = time.perf_counter()
                    raw.one(text)
                    ms.setdefault((case, gap), []).append((time.perf_counter() - t0) * 1e3)
    finally:
        for other in others.values():
            other.close()
    print("| before this process's run | " + " | ".join(f"gap {g * 1e3:.0f} ms" for g in GAPS_S) + " |")
    print("|---|" + "---|" * len(GAPS_S))
    for case in [*others, "no other process"]:
        print(f"| {case} | " + " | ".join(f"{np.median(ms[(case, g)]):.2f}" for g in GAPS_S) + " |")
    print("\n(p50 of raw ORT's single text in this process, ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
