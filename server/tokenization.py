"""Tokenization stage: prompts, truncation (either side), token counts, as the model sees them.

HF `tokenizers` does the work in Rust and releases the GIL in `encode_batch`, so several
request threads tokenize while inference runs. Truncation settings are tokenizer state, so
there is one tokenizer per direction instead of mutating a shared one per request.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from .errors import InvalidArgument
from .manifest import Manifest


@dataclass(slots=True)
class Tokenized:
    """One input, tokenized: ids (and type ids) as int64 arrays, its length, whether it was cut."""

    ids: np.ndarray
    type_ids: np.ndarray | None
    tokens: int
    truncated: bool


class ModelTokenizer:
    def __init__(self, model_dir: Path, manifest: Manifest, with_type_ids: bool):
        path = model_dir / "tokenizer.json"
        base = Tokenizer.from_file(str(path))
        base.no_padding()
        base.no_truncation()
        self.max_tokens = manifest.max_tokens
        self.with_type_ids = with_type_ids
        serialized = base.to_str()
        self._full = base
        self._by_direction: dict[str, Tokenizer] = {}
        for direction in ("right", "left"):
            tok = Tokenizer.from_str(serialized)
            tok.enable_truncation(self.max_tokens, strategy="longest_first", direction=direction)
            self._by_direction[direction] = tok

    def _convert(self, enc: Encoding) -> Tokenized:
        ids = np.array(enc.ids, dtype=np.int64)
        type_ids = np.array(enc.type_ids, dtype=np.int64) if self.with_type_ids else None
        return Tokenized(ids, type_ids, len(ids), bool(enc.overflowing))

    def _too_long(self, field: str, index: int, inp) -> InvalidArgument:
        full = self._full.encode(*inp) if isinstance(inp, tuple) else self._full.encode(inp)
        return InvalidArgument(
            field if field == "query" else f"{field}[{index}]",
            f"has {len(full.ids)} tokens, more than the model's limit of {self.max_tokens} "
            "(set truncate=true to cut it)",
        )

    def encode(self, texts: list[str], *, truncate: bool, direction: str, field: str = "inputs") -> list[Tokenized]:
        """Tokenize single texts (prompts already applied). truncate=False: too long → InvalidArgument."""
        encs = self._by_direction[direction].encode_batch(texts)
        out = [self._convert(e) for e in encs]
        if not truncate:
            for i, t in enumerate(out):
                if t.truncated:
                    raise self._too_long(field, i, texts[i])
        return out

    def encode_pairs(
        self, query: str, documents: list[str], *, truncate: bool, direction: str
    ) -> list[Tokenized]:
        """Tokenize (query, document) pairs for a cross-encoder."""
        pairs = [(query, d) for d in documents]
        encs = self._by_direction[direction].encode_batch(pairs)
        out = [self._convert(e) for e in encs]
        if not truncate:
            for i, t in enumerate(out):
                if t.truncated:
                    raise self._too_long("documents", i, pairs[i])
        return out

