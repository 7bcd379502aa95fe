"""`ember.json`: what a model directory holds and how to run it.

Written by `ember export`, read by the registry. The engine follows it: nothing about pooling,
prompts or limits is guessed at serve time.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelLoadError

MANIFEST = "ember.json"
FORMAT_VERSION = 1
TASKS = ("embed", "rerank")
DTYPES = ("fp32", "fp16", "int8", "bf16")
POOLINGS = ("mean", "cls", "last", "max", "none")
OUTPUTS = ("dense", "sparse", "multi_vector")
SPARSE_KINDS = ("token", "vocab")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    name: str
    task: str  # "embed" | "rerank"
    architecture: str
    onnx_file: str = "model.onnx"
    output: str = "last_hidden_state"  # graph output the engine reads
    dimensions: int = 0  # embedding size; 0 for rerank
    pooling: str = "mean"  # mean | cls | last | max | none (the graph's output is already pooled; embed only)
    normalize: bool = True
    max_tokens: int = 512
    padding_side: str = "right"
    pad_token_id: int = 0
    prompts: dict[str, str] = field(default_factory=dict)
    query_prompt_name: str = ""
    document_prompt_name: str = ""
    default_prompt_name: str = ""
    matryoshka_dimensions: tuple[int, ...] = ()
    dtype: str = "fp32"
    quantization: str = ""  # how an int8 graph was quantized, and for which instruction set
    optimize: str = ""
    source: str = ""
    family: str = ""  # bert, xlm-roberta, qwen3-embedding, qwen3-reranker, embeddinggemma, …
    # A reranker scored on one templated sequence (Qwen3-Reranker): prefix + body + suffix, the body
    # formatted with {instruction}, {query}, {document}; only the body is truncated.
    rerank_template: dict[str, str] = field(default_factory=dict)
    # What Embed can return (the default first): "dense" is `output` pooled; "sparse" is read from
    # `sparse_output`, either per token ("token": [B, T] weights, BGE-M3's lexical weights, kept per
    # token id at their max, the ids in `sparse_skip_ids` dropped) or per vocabulary id ("vocab":
    # [B, V], SPLADE, pooled in the graph); "multi_vector" is `multi_vector_output` [B, T, D], one
    # row per real token but the first, each normalized (BGE-M3's ColBERT vectors).
    outputs: tuple[str, ...] = ("dense",)
    sparse_output: str = ""
    sparse_kind: str = ""
    sparse_skip_ids: tuple[int, ...] = ()
    multi_vector_output: str = ""
    # Calibrated int8 ranges of the dense vectors, per served dimension (str(dims) ->
    # [mins, maxes], of truncated, normalized vectors): `ember calibrate`.
    quantization_ranges: dict[str, list[list[float]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["matryoshka_dimensions"] = list(self.matryoshka_dimensions)
        d["outputs"], d["sparse_skip_ids"] = list(self.outputs), list(self.sparse_skip_ids)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["matryoshka_dimensions"] = tuple(int(x) for x in d.get("matryoshka_dimensions", ()))
        kwargs["outputs"] = tuple(d.get("outputs") or ("dense",))
        kwargs["sparse_skip_ids"] = tuple(int(x) for x in d.get("sparse_skip_ids", ()))
        m = cls(**kwargs)
        m.validate()
        return m

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ModelLoadError(f"{MANIFEST}: task {self.task!r} is not one of {TASKS}")
        if self.dtype not in DTYPES:
            raise ModelLoadError(f"{MANIFEST}: dtype {self.dtype!r} is not one of {DTYPES}")
        if self.task == "embed" and self.dimensions <= 0:
            raise ModelLoadError(f"{MANIFEST}: an embedding model needs dimensions > 0")
        if self.task == "embed" and self.pooling not in POOLINGS:
            raise ModelLoadError(f"{MANIFEST}: pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.rerank_template and set(self.rerank_template) != {"prefix", "suffix", "body", "instruction"}:
            raise ModelLoadError(f"{MANIFEST}: rerank_template needs exactly prefix, suffix, body, instruction")
        if self.padding_side not in ("left", "right"):
            raise ModelLoadError(f"{MANIFEST}: padding_side must be left or right")
        if self.max_tokens < 2:
            raise ModelLoadError(f"{MANIFEST}: max_tokens must be >= 2")
        bad = [d for d in self.matryoshka_dimensions if not 0 < d <= self.dimensions]
        if bad:
            raise ModelLoadError(f"{MANIFEST}: matryoshka_dimensions {bad} exceed dimensions {self.dimensions}")
        outputs = self.outputs
        if not outputs or any(o not in OUTPUTS for o in outputs) or len(set(outputs)) != len(outputs):
            raise ModelLoadError(f"{MANIFEST}: outputs {list(self.outputs)} must be distinct names of {OUTPUTS}")
        if "sparse" in self.outputs and (not self.sparse_output or self.sparse_kind not in SPARSE_KINDS):
            raise ModelLoadError(f"{MANIFEST}: a sparse output needs sparse_output and sparse_kind ({SPARSE_KINDS})")
        if "multi_vector" in self.outputs and not self.multi_vector_output:
            raise ModelLoadError(f"{MANIFEST}: a multi_vector output needs multi_vector_output")
        for dims, pair in self.quantization_ranges.items():
            if not (str(dims).isdigit() and len(pair) == 2 and len(pair[0]) == len(pair[1]) == int(dims)):
                raise ModelLoadError(f"{MANIFEST}: quantization_ranges[{dims!r}] must be [mins, maxes] of {dims} "
                                     "values")
        for name in (self.query_prompt_name, self.document_prompt_name, self.default_prompt_name):
            if name and name not in self.prompts:
                raise ModelLoadError(f"{MANIFEST}: prompt {name!r} is named but not among prompts")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_files(model_dir: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under model_dir (relative POSIX paths), the manifest excepted."""
    out = {}
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = sha256_file(p)
    return out


def read_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read and check a model directory's manifest; with verify, every file's sha256 too."""
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"{model_dir}: no {MANIFEST} (export the model with `ember export`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable manifest: {e}") from e
    m = Manifest.from_dict(data)
    if verify:
        verify_checksums(model_dir, m)
    return m


def verify_checksums(model_dir: Path, m: Manifest) -> None:
    if m.onnx_file not in m.files:
        raise ModelLoadError(f"{model_dir / MANIFEST}: the graph {m.onnx_file} has no checksum")
    for rel, expected in m.files.items():
        p = model_dir / rel
        if not p.is_file():
            raise ModelLoadError(f"{p}: listed in {MANIFEST} but missing")
        actual = sha256_file(p)
        if actual != expected:
            raise ModelLoadError(
                f"checksum mismatch for {p}: expected sha256 {expected[:16]}…, found {actual[:16]}… "
                "(the file changed after export; re-export the model)"
            )
