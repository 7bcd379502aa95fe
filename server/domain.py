"""Domain view of requests: proto messages become these small frozen dataclasses at the edge.

Nothing past the servicers imports protobuf; validation that needs no model happens here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument

QUERY, DOCUMENT = 1, 2
# Encoding / EmbedOutput enum values (ember.proto) → names.
ENCODINGS = {0: "float", 1: "float", 2: "float32", 3: "float16", 4: "bfloat16", 5: "int8", 6: "uint8", 7: "binary",
             8: "ubinary"}
OUTPUTS = {1: "dense", 2: "sparse", 3: "multi_vector"}
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
    encoding: str = "float"  # float (FloatVector), or the packed bytes' encoding: ENCODINGS
    outputs: tuple[str, ...] = ()  # manifest output names; () = the model's first
    sparse_top_k: int = 0
    sparse_min_weight: float = 0.0
    return_tokens: bool = False
    int8_ranges: tuple | None = None  # (mins, maxes) float32 arrays from the request

    @property
    def packed(self) -> bool:
        return self.encoding != "float"


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


def check_texts(field: str, texts: list[str], limit: int, what: str = "input", max_chars: int = 0,
                max_total_chars: int = 0, already: int = 0) -> int:
    """Refuse an empty list, an empty text, more than `limit` texts, a text over `max_chars`
    characters, and more than `max_total_chars` in all (counting `already`), naming the index.
    Returns the characters counted."""
    if not texts:
        raise InvalidArgument(field, f"must contain at least one {what}")
    if len(texts) > limit:
        raise InvalidArgument(field, f"has {len(texts)} {what}s; the limit is {limit} per request")
    total = already
    for i, t in enumerate(texts):
        if not t:
            raise InvalidArgument(f"{field}[{i}]", f"is an empty string; every {what} needs text")
        if max_chars and len(t) > max_chars:
            raise InvalidArgument(f"{field}[{i}]", f"has {len(t)} characters; the limit is {max_chars} per {what}")
        total += len(t)
    if max_total_chars and total > max_total_chars:
        raise InvalidArgument(field, f"has {total} characters in all; the limit is {max_total_chars} per request")
    return total


def direction_of(value: int, field: str = "truncation_direction") -> str:
    return LEFT if check_enum(field, value, range(0, 3)) == 2 else RIGHT
