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
