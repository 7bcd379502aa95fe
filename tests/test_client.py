"""The Python client, sync and asyncio, against a real server; and its import without onnxruntime."""
import asyncio
import subprocess
import sys

import numpy as np
import pytest

from conftest import embed
from ember.v1 import ember_pb2 as pb
from ember_client import AsyncClient, Client


def test_client_imports_without_onnxruntime():
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "import ember_client\n"
            "assert 'onnxruntime' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_client_distribution_installs_alone_and_embeds_against_a_live_server(tiny_server, tmp_path):
    """`pip install ./clients/python` into a clean venv: grpcio, protobuf and numpy come with it,
    onnxruntime and the server do not, and it embeds, tokenizes and checks health."""
    from pathlib import Path

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    client_dir = Path(__file__).resolve().parent.parent / "clients" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(client_dir)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=60).stdout
    installed = {line.split("==")[0].split(" @ ")[0].lower() for line in freeze.splitlines()}
    assert {"ember-client", "grpcio", "protobuf", "numpy"} <= installed
    assert not installed & {"onnxruntime", "ember", "tokenizers", "grpcio-health-checking", "grpcio-status"}
    code = ("import sys\n"
            "from ember_client import Client\n"
            f"with Client({tiny_server.address!r}) as c:\n"
            "    c.wait_until_serving(timeout=30)\n"
            "    v = c.embed(['hello world', 'ember'])\n"
            "    t = c.tokenize(['hello world'], return_ids=True)\n"
            "    print(v.shape, t[0].tokens, len(t[0].ids), c.health('model/tiny-embed'))\n")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(2,", "32)", "4", "4", "SERVING"]


def test_tokenize(tiny_server):
    with Client(tiny_server.address) as c:
        plain = c.tokenize(["hello world"], return_ids=True)
        query = c.tokenize(["hello world"], input_type="query")  # with the model's query prompt
        cut = c.tokenize(["word " * 500])
    want = tiny_server.models.Tokenize(pb.TokenizeRequest(inputs=["hello world"], return_ids=True)).inputs[0]
    assert plain[0].tokens == want.tokens == len(plain[0].ids) and plain[0].ids == tuple(want.ids)
    assert query[0].tokens > plain[0].tokens and not query[0].ids
    assert cut[0].truncated and cut[0].tokens == 64  # tiny-embed's max_tokens


def test_sync_client(tiny_server):
    with Client(tiny_server.address) as c:
        c.wait_until_serving()
        c.wait_until_serving("model/tiny-embed")
        v = c.embed(["hello", "world"])
        assert v.shape == (2, 32) and v.dtype == np.float32
        ref = np.stack([np.array(e.values.values) for e in embed(tiny_server, ["hello", "world"]).embeddings])
        np.testing.assert_allclose(v, ref, rtol=1e-6)
        assert c.embed(["hello"], dimensions=8).shape == (1, 8)
        q = c.embed(["hello"], input_type="query")
        np.testing.assert_allclose(q, c.embed(["query: hello"]), atol=1e-6)
        hits = c.rerank("cats", ["dogs", "cats and kittens", "fish"], top_n=2, return_documents=True)
        assert len(hits) == 2 and hits[0].score >= hits[1].score and hits[0].document is not None
        models = {m.name: m for m in c.list_models()}
        assert models["tiny-embed"].task == "embed" and models["tiny-rerank"].task == "rerank"
        assert models["tiny-embed"].max_batch_tokens == 16384  # the default; this machine has the memory
        assert c.health("model/tampered") == "NOT_SERVING"
        with pytest.raises(TimeoutError):
            c.wait_until_serving("model/tampered", timeout=0.3)


def test_sync_stream_helper_keeps_order(tiny_server):
    texts = [f"text {i}" for i in range(1000)]
    with Client(tiny_server.address) as c:
        parts = list(c.embed_stream(iter(texts), batch_size=37))  # any iterable, any size
        got = np.concatenate(parts)
        assert got.shape == (1000, 32)
        np.testing.assert_allclose(got[[0, 500, 999]], c.embed([texts[0], texts[500], texts[999]]), rtol=1e-4,
                                   atol=1e-5)


def test_async_client(tiny_server):
    async def run():
        async with AsyncClient(tiny_server.address) as c:
            await c.wait_until_serving()
            v = await c.embed(["hello", "world"])
            hits = await c.rerank("cats", ["dogs", "cats"])

            async def gen():
                for i in range(300):
                    yield f"text {i}"

            streamed = np.concatenate([a async for a in c.embed_stream(gen(), batch_size=64)])
            models = await c.list_models()
            return v, hits, streamed, models

    v, hits, streamed, models = asyncio.run(run())
    assert v.shape == (2, 32) and len(hits) == 2 and streamed.shape == (300, 32)
    with Client(tiny_server.address) as c:
        np.testing.assert_allclose(streamed[:3], c.embed(["text 0", "text 1", "text 2"]), rtol=1e-4, atol=1e-5)
    assert {m.name for m in models} == {"tiny-embed", "tiny-rerank"}


def test_float_encoding_decodes_too(tiny_server):
    from ember_client._client import embeddings_array

    resp = embed(tiny_server, ["a", "b"], encoding=pb.ENCODING_FLOAT)
    assert embeddings_array(resp).shape == (2, 32)


def test_big_lists_are_chunked_over_a_stream(tiny_server):
    texts = [f"text number {i}" for i in range(1000)]
    with Client(tiny_server.address, chunk_size=64) as c:  # the fixture allows 64 inputs per request
        many = c.embed(texts)
        assert many.shape == (1000, 32)
        np.testing.assert_allclose(many[[0, 500, 999]], c.embed([texts[0], texts[500], texts[999]]), atol=1e-5)


def test_retry_waits_for_the_servers_retry_hint(tiny_models_dir):
    """A full queue answers RESOURCE_EXHAUSTED with a RetryInfo delay; the client waits and succeeds."""
    import threading

    from conftest import start_server

    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed",), max_queue_items=4, inline_max_tokens=0,
                     inference_workers=1)  # one worker: held, it keeps the rest queued
    sched = s.server.registry.models["tiny-embed"].scheduler
    real, gate = sched.engine, threading.Event()

    class Held:
        manifest, needs_type_ids = real.manifest, real.needs_type_ids

        def infer(self, ids, mask, type_ids):
            gate.wait(30)
            return real.infer(ids, mask, type_ids)

    sched.engine = Held()
    try:
        blocker = threading.Thread(target=lambda: s.embedder.Embed(pb.EmbedRequest(inputs=["a"])))
        blocker.start()
        while not sched._busy:
            pass
        filler = threading.Thread(target=lambda: s.embedder.Embed(pb.EmbedRequest(inputs=["b"] * 4)))
        filler.start()
        while sched.queued() < 4:
            pass
        threading.Timer(0.3, gate.set).start()  # the queue drains after 0.3 s
        with Client(s.address, retries=20) as c:
            out = c.embed(["x", "y"])  # refused at first (queue full), then served
        assert out.shape == (2, 32)
        blocker.join(30)
        filler.join(30)
    finally:
        gate.set()
        sched.engine = real
        s.stop()


def test_round_robin_over_three_replicas_survives_one_killed(tiny_models_dir):
    import re
    import signal
    import threading
    import urllib.request

    procs, ports, metrics = [], [], []
    try:
        for _ in range(3):
            p = subprocess.Popen([sys.executable, "-m", "ember", "serve", "--host", "127.0.0.1", "--port", "0",
                                  "--models-dir", str(tiny_models_dir), "--models", "tiny-embed"],
                                 stderr=subprocess.PIPE, text=True)
            procs.append(p)
        for p in procs:
            port = mport = None
            for line in p.stderr:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                port = int(m.group(1)) if m else port
                m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)", line)
                mport = int(m.group(1)) if m else mport
                if "ready" in line:
                    break
            threading.Thread(target=lambda p=p: [None for _ in p.stderr], daemon=True).start()
            ports.append(port)
            metrics.append(mport)

        def served(i: int) -> float:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics[i]}/metrics", timeout=10).read().decode()
            m = re.search(r'ember_requests_total\{code="OK",model="tiny-embed",rpc="Embed"\} ([\d.]+)', text)
            return float(m.group(1)) if m else 0.0

        answered = 0
        with Client([f"127.0.0.1:{p}" for p in ports], timeout=30) as c:
            c.wait_until_serving()
            for i in range(90):
                assert c.embed([f"request {i}"]).shape == (1, 32)
                answered += 1
            spread = [served(i) for i in range(3)]
            assert all(n > 0 for n in spread) and sum(spread) == 90  # every replica took a share
            procs[1].send_signal(signal.SIGKILL)  # one replica dies, mid-run, without a goodbye
            procs[1].wait(10)
            for i in range(90, 300):
                assert c.embed([f"request {i}"]).shape == (1, 32)  # retries carry the calls that hit it
                answered += 1
        survivors = [served(0), served(2)]
        print(f"\nround robin: {answered} answered; spread before the kill {spread}, survivors after {survivors}")
        assert answered == 300 and sum(survivors) == 300 - spread[1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
