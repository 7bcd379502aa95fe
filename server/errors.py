"""Domain errors and the one table that maps them to gRPC status codes.

Servicers raise these; `to_rpc_status` turns them into a `google.rpc.Status` with details
(BadRequest field violations, RetryInfo). Anything that is not an `EmberError` is a bug and is
reported as INTERNAL by the servicer, logged with the request id.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` names it with its index (`inputs[3]`)."""

    field: str
    description: str


class EmberError(Exception):
    """Base of every error ember answers on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(EmberError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str):
        super().__init__(f"{field}: {description}")
        self.violations = [FieldViolation(field, description)]


class NotFound(EmberError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(EmberError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(EmberError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(EmberError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(EmberError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(EmberError):
    code = grpc.StatusCode.CANCELLED


class Unauthenticated(EmberError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(EmberError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ModelLoadError(Exception):
    """A model directory that cannot be served (bad manifest, checksum mismatch, broken graph)."""


def to_rpc_status(err: EmberError) -> status_pb2.Status:
    """The error table: an EmberError as a google.rpc.Status with its details."""
    status = status_pb2.Status(code=_CODES[err.code], message=err.message)
    if isinstance(err, InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
        status.details.add().Pack(detail)
    elif isinstance(err, ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(err.retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


_CODES = {c: getattr(code_pb2, c.name) for c in grpc.StatusCode}
