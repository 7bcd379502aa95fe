"""The embedding cache: an LRU with a TTL and a byte budget (cachetools' TTLCache, sized in bytes).

An entry is what inference produced for one input — the pooled vector before Matryoshka
truncation and normalization — with its token count and truncation flag, so one entry answers
every `dimensions` / `normalize` a client asks for. The key is everything else that decides that
vector: the model (name and the sha256 of its graph, so a re-exported model never serves old
vectors), the prompt, the truncation side and switch, and a BLAKE2b hash of the text. Used only
from the event loop thread.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
from cachetools import TTLCache

ENTRY_OVERHEAD = 200  # bytes of bookkeeping per entry besides the vector (key, tuple, LRU links)


class Entry(NamedTuple):
    vector: np.ndarray  # pooled, float32, before truncation/normalization
    tokens: int
    truncated: bool


class EmbeddingCache:
    def __init__(self, max_bytes: int, ttl_seconds: float):
        self._lru: TTLCache = TTLCache(maxsize=max_bytes, ttl=ttl_seconds,
                                       getsizeof=lambda e: e.vector.nbytes + ENTRY_OVERHEAD)

    @staticmethod
    def key(model_id: str, prompt: str, truncate: bool, direction: str, text: str) -> tuple:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return model_id, prompt, truncate, direction, digest

    def get(self, key: tuple) -> Entry | None:
        return self._lru.get(key)

    def put(self, key: tuple, entry: Entry) -> None:
        if entry.vector.nbytes + ENTRY_OVERHEAD <= self._lru.maxsize:
            self._lru[key] = entry

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)
