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
                     "--dtype", "fp16"]) == 2
    assert "--dtype fp16 is not supported" in capsys.readouterr().err
    # Never writes over an existing model directory.
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("x")
    assert cli.main(["export", str(hf_sources["rerank"]), str(tmp_path / "y"), "--task", "rerank"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
