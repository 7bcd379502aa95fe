"""The few messages of the gRPC ecosystem the client reads or writes beside ember's own, in
protobuf's wire format by hand: the standard health check, and the RetryInfo a server puts in a
status's details. So the client needs neither grpcio-health-checking nor googleapis-common-protos.
"""
from __future__ import annotations

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a message: varints as int, length-delimited as bytes; fixed-width
    fields are skipped."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _read_varint(data, i)
        elif kind == 2:
            n, i = _read_varint(data, i)
            value, i = data[i:i + n], i + n
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
            continue
        else:
            raise ValueError(f"wire type {kind} is not expected here")
        out.append((number, value))
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def health_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service}."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def health_status(data: bytes) -> str:
    """The status name of a grpc.health.v1.HealthCheckResponse."""
    status = next((v for f, v in fields(data) if f == 1), 0)
    return SERVING_STATUS.get(status, "UNKNOWN")


def retry_delay_s(status_details: bytes) -> float | None:
    """The RetryInfo delay in a google.rpc.Status (the grpc-status-details-bin trailer), if any."""
    for number, any_ in fields(status_details):
        if number != 3 or not isinstance(any_, bytes):  # Status.details: repeated Any
            continue
        parts = dict(fields(any_))
        if parts.get(1) != RETRY_INFO.encode():
            continue
        delay = dict(fields(parts.get(2, b""))).get(1, b"")  # RetryInfo.retry_delay: Duration
        d = dict(fields(delay))
        return d.get(1, 0) + d.get(2, 0) / 1e9
    return None
