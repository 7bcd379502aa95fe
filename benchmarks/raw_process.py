"""Raw ONNX Runtime's single text in a process of its own, for bench.py's latency section.

    python benchmarks/raw_process.py MODEL_DIR [--no-spinning] [--pin]

Reads one text per line on stdin and answers each with the nanoseconds `bench.RawOrt.one` took
on it (tokenize, one session run, pooling, normalization), timed here around that call only.
ember and floor_server.py run in processes of their own that wait on a socket between calls;
raw ORT in bench.py's own process shares it with the clients and their threads. Run like this,
raw ORT waits on a pipe between calls as the servers do, so the single-text table can show
whether the reference's process placement moves it. Prints "ready" once the session is warm.
With --no-spinning, the session's idle intra-op threads do not spin (spinning threads take CPU
from other processes). With --pin, the session's pool thread and this process's thread are
pinned to cores of their own, as ember's `--pin-threads` pins its main session and the thread that runs a lone call.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from bench import RawOrt


def main() -> int:
    raw = RawOrt(Path(sys.argv[1]), spinning="--no-spinning" not in sys.argv[2:], pin="--pin" in sys.argv[2:])
    raw.one("warm up")
    print("ready", flush=True)
    for line in sys.stdin:
        text = line.rstrip("\n")
        t0 = time.perf_counter_ns()
        raw.one(text)
        print(time.perf_counter_ns() - t0, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
