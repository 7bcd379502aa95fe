"""The Go and Node examples (clients/), built by `make clients`, run against a live server.

Each example checks health, a unary Embed, a bidirectional EmbedStream of 10,000 inputs with every
request id answered exactly once, and Rerank, and prints a JSON summary last. `make test` builds
them first (and installs Go and Node's packages); where they are not built these tests fail in CI
and are skipped elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "go": [str(ROOT / "clients/go/bin/ember-example")],
    "node": [shutil.which("node") or "node", str(ROOT / "clients/node/dist/example.js")],
}


@pytest.mark.parametrize("lang", sorted(EXAMPLES))
def test_example_against_a_live_server(lang, minilm_server):
    cmd = EXAMPLES[lang]
    if not Path(cmd[-1]).is_file() or not shutil.which(cmd[0]):
        if os.environ.get("CI"):
            pytest.fail(f"{cmd[-1]} is not built: `make test` runs `make clients` first")
        pytest.skip(f"{cmd[-1]} not built (make clients)")
    # the Node example also calls the HTTP API's /v1/embeddings through npm's `openai` package
    http = [f"http://127.0.0.1:{minilm_server.server.http_port}"] if lang == "node" else []
    r = subprocess.run([*cmd, minilm_server.address, *http], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\n{lang}: " + r.stdout.strip().replace("\n", f"\n{lang}: "))
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    # The Go example also drives both streams one message at a time (an answer before each next send).
    extra = {"ping_pong_rounds": 40} if lang == "go" else {"openai_embedding_dimensions": 384}
    assert summary == {"client": lang, "health": "SERVING", "embed_dimensions": 384, "stream_inputs": 10000,
                       "stream_ids": 100, "rerank_results": 3, "binary_bytes": 48, **extra}


PROBE = ROOT / "clients/go/bin/grpc_health_probe"


def probe(*args: str) -> subprocess.CompletedProcess:
    if not PROBE.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{PROBE} is not built: `make test` runs `make clients` first")
        pytest.skip("grpc_health_probe not built (make health-probe)")
    return subprocess.run([str(PROBE), *args], capture_output=True, text=True, timeout=60)


def test_grpc_health_probe_exit_codes(tiny_server):
    """The probe the Docker HEALTHCHECK runs: grpc_health_probe's flags and exit codes."""
    addr = f"-addr={tiny_server.address}"
    r = probe(addr)
    assert (r.returncode, r.stdout.strip()) == (0, "status: SERVING")
    assert probe(addr, "-service=model/tiny-embed").returncode == 0
    assert probe(addr, "-service=ember.v1.Embedder").returncode == 0
    r = probe(addr, "-service=model/tampered")  # refused at load (checksum): known but not serving
    assert r.returncode == 4 and "NOT_SERVING" in r.stderr
    r = probe(addr, "-service=no.such.Service")
    assert r.returncode == 3 and "NotFound" in r.stderr
    r = probe("-addr=127.0.0.1:1", "-connect-timeout=300ms")  # nothing listens there
    assert r.returncode == 2 and "failed to connect" in r.stderr
    assert probe().returncode == 1  # -addr missing


LATENCY = ROOT / "clients/go/bin/ember-latency"


def test_go_latency_client_times_real_calls(tiny_server):
    """benchmarks/bench.py's Go client: one answer line per command, a duration for a call that
    succeeded and the error of one that did not."""
    if not LATENCY.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{LATENCY} is not built: `make test` runs `make clients` first")
        pytest.skip("ember-latency not built (make clients)")
    commands = ["embed a short text", "list", "health", "embed " + "word " * 5000, "bogus", "wall a short text"]
    r = subprocess.run([str(LATENCY), tiny_server.address], input="\n".join(commands) + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(commands)
    assert all(line.isdigit() and int(line) > 0 for line in lines[:3]), lines
    assert lines[3].startswith("error ") and "InvalidArgument" in lines[3] and "inputs[0]" in lines[3], lines[3]
    assert lines[4] == 'error unknown command "bogus"'
    took, start, end = (int(x) for x in lines[5].split())  # wall: the duration, then its Unix ns span
    assert took > 0 and end - start == took and abs(start / 1e9 - time.time()) < 60, lines[5]
