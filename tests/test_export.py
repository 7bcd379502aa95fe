"""`ember export` writes a model directory the registry trusts only while its checksums hold."""
import json
import shutil

import onnxruntime as ort
import pytest

from ember import cli
from ember.errors import ModelLoadError
from ember.manifest import read_manifest, sha256_file


def test_embed_manifest_follows_sentence_transformers_files(tiny_models_dir):
    d = tiny_models_dir / "tiny-embed"
    m = read_manifest(d)
    assert (m.task, m.pooling, m.normalize, m.dimensions) == ("embed", "mean", True, 32)
    assert m.max_tokens == 64  # sentence_bert_config.json, not the 128 positions of the config
    assert m.prompts == {"query": "query: ", "document": "passage: ", "classification": "classify: "}
    assert (m.query_prompt_name, m.document_prompt_name) == ("query", "document")
    assert m.matryoshka_dimensions == (32, 16, 8)
    assert m.dtype == "fp32" and m.architecture == "BertModel"
    assert {"model.onnx", "tokenizer.json"} <= set(m.files)
    for rel, digest in m.files.items():
        assert sha256_file(d / rel) == digest
    outputs = [o.name for o in ort.InferenceSession(str(d / "model.onnx")).get_outputs()]
    assert m.output in outputs


def test_export_writes_the_weights_beside_the_graph_readable_as_the_graph_is(tiny_models_dir):
    import stat

    for name in ("tiny-embed", "tiny-rerank"):
        d = tiny_models_dir / name
        m = read_manifest(d)
        graph, data = d / m.onnx_file, d / (m.onnx_file + "_data")
        assert data.name in m.files and sha256_file(data) == m.files[data.name]
        assert graph.stat().st_size < data.stat().st_size / 2  # the graph keeps its structure only
        assert stat.S_IMODE(data.stat().st_mode) == stat.S_IMODE(graph.stat().st_mode)


def test_weights_already_beside_the_graph_are_rewritten_into_one_file(tiny_models_dir, tmp_path):
    import numpy as np
    import onnx

    from ember.export import _weights_beside

    src = tiny_models_dir / "tiny-embed"
    graph = tmp_path / "model.onnx"
    # as an exporter writes a graph over 2 GB: its weights beside it, under another name
    onnx.save_model(onnx.load(str(src / "model.onnx")), str(graph), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    _weights_beside(graph)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx_data"]
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    a, b = (ort.InferenceSession(str(g)).run(None, feeds)[0] for g in (src / "model.onnx", graph))
    assert np.array_equal(a, b)


def test_export_can_keep_the_weights_in_the_graph_file(hf_sources, tiny_models_dir, tmp_path):
    import numpy as np

    from ember.engine import Engine

    out = tmp_path / "tiny-in-graph"
    assert cli.main(["export", str(hf_sources["embed"]), str(out), "--task", "embed", "--weights", "graph"]) == 0
    m = read_manifest(out)
    assert not (out / "model.onnx_data").exists() and "model.onnx_data" not in m.files
    beside = tiny_models_dir / "tiny-embed"
    assert (out / "model.onnx").stat().st_size > sum((beside / f).stat().st_size for f in ("model.onnx",
                                                                                         "model.onnx_data")) * 0.9
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    a, b = (Engine(d, read_manifest(d), ("cpu",)).infer(ids, np.ones_like(ids), np.zeros_like(ids))
            for d in (out, beside))
    assert np.array_equal(a, b)


def test_rerank_manifest(tiny_models_dir):
    m = read_manifest(tiny_models_dir / "tiny-rerank")
    assert (m.task, m.output, m.dimensions, m.pooling) == ("rerank", "logits", 0, "")
    assert m.max_tokens == 128


def test_real_model_manifest_reads_sentence_transformers_config(minilm_server):
    m = minilm_server.server.registry.models["all-MiniLM-L6-v2"].manifest
    assert (m.pooling, m.normalize, m.max_tokens, m.dimensions) == ("mean", True, 256, 384)


def test_checksum_mismatch_names_the_file(tiny_models_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_models_dir / "tiny-embed", d)
    read_manifest(d)
    with open(d / "model.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match=r"checksum mismatch for .*model\.onnx"):
        read_manifest(d)


def test_missing_file_and_bad_manifest_are_refused(tiny_models_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tiny_models_dir / "tiny-embed", d)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json: listed in ember.json but missing"):
        read_manifest(d)
    data = json.loads((d / "ember.json").read_text())
    data["task"] = "classify"
    (d / "ember.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="task 'classify'"):
        read_manifest(d)


def test_export_refusals_are_clear(hf_sources, tmp_path, capsys):
    assert cli.main(["export", str(hf_sources["embed"]), str(tmp_path / "x"), "--task", "embed",
                     "--dtype", "bf16"]) == 2
    assert "--dtype bf16 is not supported" in capsys.readouterr().err
    from ember.export import ExportError, export_model

    with pytest.raises(ExportError, match="--weights must be beside or graph"):
        export_model(hf_sources["embed"], tmp_path / "w", "embed", weights="inline")
    # Never writes over an existing model directory.
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("x")
    assert cli.main(["export", str(hf_sources["rerank"]), str(tmp_path / "y"), "--task", "rerank"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_int8_export_quantizes_for_the_named_isa(hf_sources, tiny_models_dir, tmp_path):
    import numpy as np
    import onnx

    from ember.engine import Engine
    from ember.export import cpu_isa

    out = tmp_path / "tiny-int8"
    assert cli.main(["export", str(hf_sources["embed"]), str(out), "--task", "embed", "--dtype", "int8",
                     "--isa", "avx2"]) == 0
    m = read_manifest(out)
    assert m.dtype == "int8" and m.onnx_file == "model_int8.onnx"
    assert "isa=avx2" in m.quantization and "reduce_range=True" in m.quantization
    ops = {n.op_type for n in onnx.load(str(out / m.onnx_file)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops, ops
    assert cpu_isa() in ("amx", "vnni", "avx512", "avx2", "arm64", "generic")
    # int8 stays close to fp32 on the same batch
    fp32_dir = tiny_models_dir / "tiny-embed"
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 7592, 2088, 2003, 2307, 1012, 2009, 102]])
    mask = (ids != 0).astype(np.int64)
    a = Engine(out, m, ("cpu",)).infer(ids, mask, np.zeros_like(ids))
    b = Engine(fp32_dir, read_manifest(fp32_dir), ("cpu",)).infer(ids, mask, np.zeros_like(ids))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos


def test_optimized_export_records_the_level_and_serves(hf_sources, tmp_path):
    import numpy as np

    from ember.engine import Engine

    out = tmp_path / "tiny-o1"
    assert cli.main(["export", str(hf_sources["embed"]), str(out), "--task", "embed", "--optimize", "O1"]) == 0
    m = read_manifest(out)
    assert m.optimize == "O1" and m.dtype == "fp32"
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    v = Engine(out, m, ("cpu",)).infer(ids, np.ones_like(ids), np.zeros_like(ids))
    assert v.shape == (1, 32) and np.isfinite(v).all()
