"""Security: API keys on every RPC except health and reflection, TLS and mutual TLS from files.

A key travels as gRPC metadata `authorization: Bearer <key>`. No key (or not in that form) →
UNAUTHENTICATED; a key that is not one of the server's → PERMISSION_DENIED. Keys are compared in
constant time, against every configured key, so the time taken says nothing about which key was
close.
"""
from __future__ import annotations

import hmac

import grpc

from .settings import Settings

# Kubernetes probes and service discovery must work without a key.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


ADMIN_PREFIX = "/ember.v1.Admin/"
ADMIN_OFF = "the Admin service is off: start the server with --admin-api-keys"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Keys for the data RPCs (when any are configured; admin keys count too) and admin keys for
    the Admin service (always: without admin keys it is switched off)."""

    def __init__(self, keys: tuple[str, ...], admin_keys: tuple[str, ...] = ()):
        self._admin = [k.encode() for k in admin_keys]
        self._keys = [k.encode() for k in keys] + self._admin if keys else []

    def check(self, metadata, keys: list[bytes] | None = None) -> tuple[grpc.StatusCode, str] | None:
        keys = self._keys if keys is None else keys
        auth = ""
        for k, v in metadata or ():
            if k == "authorization":
                auth = v if isinstance(v, str) else v.decode("latin-1")
        if not auth:
            return grpc.StatusCode.UNAUTHENTICATED, "missing API key: send metadata 'authorization: Bearer <key>'"
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return grpc.StatusCode.UNAUTHENTICATED, "the authorization metadata must be 'Bearer <key>'"
        given = token.strip().encode()
        ok = False
        for key in keys:  # no early exit: every key is compared
            ok |= hmac.compare_digest(given, key)
        return None if ok else (grpc.StatusCode.PERMISSION_DENIED, "the API key is not valid for this server")

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        if details.method.startswith(ADMIN_PREFIX):
            if not self._admin:  # the service is off and refuses by itself (app.RefusingServicer)
                return handler
            refused = self.check(details.invocation_metadata, self._admin)
            if refused and refused[0] == grpc.StatusCode.PERMISSION_DENIED:
                refused = (refused[0], "this key may not use the Admin service")
        elif self._keys:
            refused = self.check(details.invocation_metadata)
        else:
            return handler
        return handler if refused is None else _refusing(handler, *refused)


def _refusing(handler, code: grpc.StatusCode, message: str):
    """A handler of the same kind as `handler` that answers `code` without reading the request."""
    async def refuse(_request, context):
        await context.abort(code, message)

    kind = ("unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream
            else "stream_unary" if handler.stream_unary else "stream_stream")
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def server_credentials(s: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' files (mutual TLS when a client CA is given), or None."""
    if not s.tls_cert:
        return None

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    ca = read(s.tls_client_ca) if s.tls_client_ca else None
    return grpc.ssl_server_credentials([(read(s.tls_key), read(s.tls_cert))], root_certificates=ca,
                                       require_client_auth=ca is not None)
