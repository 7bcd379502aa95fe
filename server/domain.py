"""Domain view of requests: proto messages become these small frozen dataclasses at the edge.

Nothing past the servicers imports protobuf; validation that needs no model happens here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument

QUERY, DOCUMENT = 1, 2
RIGHT, LEFT = "right", "left"


@dataclass(frozen=True, slots=True)
class EmbedParams:
    model: str
    inputs: list[str]
    input_type: int  # 0, QUERY or DOCUMENT
    prompt_name: str
    normalize: bool
    dimensions: int
    truncate: bool
    direction: str
    bulk: bool
    packed: bool


@dataclass(frozen=True, slots=True)
class RerankParams:
    model: str
    query: str
    documents: list[str]
    top_n: int
    return_documents: bool
    raw_scores: bool
    truncate: bool
    direction: str
    bulk: bool
    instruction: str = ""


def check_enum(field: str, value: int, allowed: range) -> int:
    if value not in allowed:
        raise InvalidArgument(field, f"unknown value {value} (allowed: {allowed.start}..{allowed.stop - 1})")
    return value


def check_texts(field: str, texts: list[str], limit: int, what: str = "input") -> None:
    """Refuse an empty list, an empty text, and more than `limit` texts, naming the index."""
    if not texts:
        raise InvalidArgument(field, f"must contain at least one {what}")
    if len(texts) > limit:
        raise InvalidArgument(field, f"has {len(texts)} {what}s; the limit is {limit} per request")
    for i, t in enumerate(texts):
        if not t:
            raise InvalidArgument(f"{field}[{i}]", f"is an empty string; every {what} needs text")


def direction_of(value: int, field: str = "truncation_direction") -> str:
    return LEFT if check_enum(field, value, range(0, 3)) == 2 else RIGHT
