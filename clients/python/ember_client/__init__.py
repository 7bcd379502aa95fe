"""Python client for ember (sync and asyncio). Needs grpcio, protobuf and numpy only.

    from ember_client import Client
    with Client("localhost:50051") as c:
        c.wait_until_serving()
        vectors = c.embed(["hello", "world"])          # numpy float32 [2, D]
        ranked = c.rerank("query", ["doc a", "doc b"])  # [RerankHit(index, score, document)]
"""
from __future__ import annotations

from ._client import RETRYABLE, AsyncClient, Client, ModelFacts, RerankHit, StreamPool, TokenCount, replicas

__all__ = ["Client", "AsyncClient", "RerankHit", "ModelFacts", "TokenCount", "StreamPool", "RETRYABLE", "replicas"]
