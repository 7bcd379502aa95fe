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
        self.template = manifest.rerank_template
        budget = self.max_tokens
        if self.template:
            # prefix + body + suffix: the prefix and suffix are kept whole, only the body is cut
            self._prefix = np.array(base.encode(self.template["prefix"], add_special_tokens=False).ids, dtype=np.int64)
            self._suffix = np.array(base.encode(self.template["suffix"], add_special_tokens=False).ids, dtype=np.int64)
            budget = self.max_tokens - len(self._prefix) - len(self._suffix)
            if budget < 1:
                raise ValueError(f"the rerank template alone is longer than max_tokens={self.max_tokens}")
        for direction in ("right", "left"):
            tok = Tokenizer.from_str(serialized)
            tok.enable_truncation(budget, strategy="longest_first", direction=direction)
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
        self, query: str, documents: list[str], *, truncate: bool, direction: str, instruction: str = ""
    ) -> list[Tokenized]:
        """Tokenize (query, document) pairs for a cross-encoder (or into the model's rerank template)."""
        if self.template:
            return self._encode_template(query, documents, truncate=truncate, direction=direction,
                                         instruction=instruction or self.template["instruction"])
        pairs = [(query, d) for d in documents]
        encs = self._by_direction[direction].encode_batch(pairs)
        out = [self._convert(e) for e in encs]
        if not truncate:
            for i, t in enumerate(out):
                if t.truncated:
                    raise self._too_long("documents", i, pairs[i])
        return out

    def _encode_template(self, query: str, documents: list[str], *, truncate: bool, direction: str,
                         instruction: str) -> list[Tokenized]:
        body = self.template["body"]
        texts = [body.format(instruction=instruction, query=query, document=d) for d in documents]
        encs = self._by_direction[direction].encode_batch(texts, add_special_tokens=False)
        out = []
        for i, e in enumerate(encs):
            if e.overflowing and not truncate:
                n = len(self._full.encode(texts[i], add_special_tokens=False).ids)
                raise InvalidArgument(f"documents[{i}]", f"has {n + len(self._prefix) + len(self._suffix)} tokens "
                                      f"with the query and the model's prompt template, more than the limit of "
                                      f"{self.max_tokens} (set truncate=true to cut it)")
            ids = np.concatenate([self._prefix, np.array(e.ids, dtype=np.int64), self._suffix])
            out.append(Tokenized(ids, np.zeros_like(ids) if self.with_type_ids else None, len(ids),
                                 bool(e.overflowing)))
        return out
