"""Weights past protobuf's 2 GB: exported beside the graph, checksummed, loaded and served end to end.

A cheap stand-in for a real-size model: one BERT layer of width 64 with an embedding table of
8.4 M rows (2.15 GB of float32), so the export writes as much weight data as XLM-R-large's while
the graph and the runs stay small (about a minute here, most of it writing and hashing 2 GB).
"""
from __future__ import annotations

import json
import shutil

import numpy as np

from conftest import _copy_tokenizer, run_export, start_server
from ember.v1 import ember_pb2 as pb

ROWS = 8_400_000  # × 64 float32 = 2.15 GB


def test_a_model_past_2_gb_exports_beside_its_graph_loads_and_answers_like_torch(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=ROWS, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128)
    model = BertModel(cfg).eval()
    src = tmp_path / "src"
    model.save_pretrained(src)
    _copy_tokenizer(src)
    out = run_export(src, tmp_path / "models" / "big", "embed")
    shutil.rmtree(src)  # 2 GB less on disk while the server runs
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    assert files["model.onnx_data"] > 2**31 and files["model.onnx"] < 1 << 20  # the weights beside the graph
    assert "model.onnx_data" in json.loads((out / "ember.json").read_text())["files"]  # and checksummed

    texts = ["weights past two gigabytes", "still served like any model"]
    s = start_server(models_dir=str(tmp_path / "models"))
    try:
        resp = s.embedder.Embed(pb.EmbedRequest(inputs=texts, encoding=pb.ENCODING_FLOAT32_BYTES), timeout=120)
        got = np.frombuffer(b"".join(e.packed for e in resp.embeddings), "<f4").reshape(2, 64)
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        tok.no_padding()  # the file pads to 128 for sentence-transformers; the reference wants the text alone
        want = []
        with torch.no_grad():
            for t in texts:
                ids = torch.tensor([tok.encode(t).ids])
                hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
                v = hidden.mean(0).numpy()
                want.append(v / np.linalg.norm(v))
        cos = (got * np.stack(want)).sum(1)
        assert cos.min() > 0.9999, cos
    finally:
        s.stop()
