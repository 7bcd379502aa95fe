"""Fast EmbedResponse building: the embeddings are written as protobuf wire bytes and parsed once.

A packed `repeated float` and a `bytes` field of little-endian float32 have the same payload:
the array's raw bytes. Writing that payload straight from the NumPy array, and letting the
protobuf runtime (upb, in C) parse the whole repeated field in one call, avoids creating a
Python float per component (FLOAT) and a message object per embedding (both encodings).
Field numbers come from the descriptors, so a renumbered proto cannot silently break this.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .v1 import ember_pb2 as pb

_LEN, _VARINT = 2, 0  # wire types


def _tag(message, field: str, wire_type: int) -> bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_EMBEDDINGS = _tag(pb.EmbedResponse, "embeddings", _LEN)
_VALUES = _tag(pb.Embedding, "values", _LEN)
_FLOATS = _tag(pb.FloatVector, "values", _LEN)
_PACKED = _tag(pb.Embedding, "packed", _LEN)
_TOKENS = _tag(pb.Embedding, "tokens", _VARINT)
_TRUNCATED = _tag(pb.Embedding, "truncated", _VARINT) + b"\x01"


def field_bytes(message, field: str, payload: bytes) -> bytes:
    """A length-delimited field of `message` holding `payload` (a sub-message's or bytes' wire bytes)."""
    return _tag(message, field, _LEN) + _varint(len(payload)) + payload


def embed_response(vectors: np.ndarray | None, tokens: Sequence[int], truncated: Sequence[bool],
                   packed: bool, extras: Sequence[bytes] | None = None) -> pb.EmbedResponse:
    """An EmbedResponse holding one Embedding per input, with tokens/truncated: each row of
    `vectors` as values (float32), or as packed bytes (float32 rows, or uint8 rows already
    encoded); no vector where `vectors` is None. `extras`: each Embedding's further field bytes."""
    count = len(tokens)
    if vectors is None:
        n, head, body = 0, b"", memoryview(b"")
    else:
        rows = vectors if vectors.dtype == np.uint8 else np.ascontiguousarray(vectors, dtype="<f4")
        n = rows.shape[1] * rows.itemsize
        if packed:
            head = _PACKED + _varint(n)
        else:  # Embedding.values is a FloatVector message whose only field is the packed floats
            floats = _FLOATS + _varint(n)
            head = _VALUES + _varint(len(floats) + n) + floats
        body = memoryview(np.ascontiguousarray(rows).tobytes())
    parts: list = []
    for i in range(count):
        tail = _TOKENS + _varint(tokens[i]) if tokens[i] else b""
        if truncated[i]:
            tail += _TRUNCATED
        if extras is not None:
            tail += extras[i]
        parts += (_EMBEDDINGS, _varint(len(head) + n + len(tail)), head, body[i * n:(i + 1) * n], tail)
    return pb.EmbedResponse.FromString(b"".join(parts))
