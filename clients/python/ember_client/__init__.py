"""Python client for ember (sync and asyncio). Needs grpcio, protobuf and numpy only.

    from ember_client import Client
    with Client("localhost:50051") as c:
        c.wait_until_serving()
        vectors = c.embed(["hello", "world"])          # numpy float32 [2, D]
        ranked = c.rerank("query", ["doc a", "doc b"])  # [RerankHit(index, score, document)]
        bits = c.embed(["hello"], encoding="ubinary")  # uint8 [1, D / 8]: sign bits
        out = c.encode(["hello"], sparse=True, multi_vector=True)  # BGE-M3: out.dense, out.sparse, …
"""
from __future__ import annotations

from ._client import (ENCODINGS, RETRYABLE, AsyncClient, Client, Encoded, ModelFacts, RerankHit, SparseEmbeddings,
                      StreamPool, TokenCount, replicas)

__all__ = ["Client", "AsyncClient", "RerankHit", "ModelFacts", "TokenCount", "StreamPool", "RETRYABLE", "replicas",
           "ENCODINGS", "Encoded", "SparseEmbeddings"]
