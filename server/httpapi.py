"""HTTP/JSON beside gRPC: the APIs existing clients already speak, on the server's own event loop.

- OpenAI: `POST /v1/embeddings`, `GET /v1/models` (the `openai` SDK, LangChain's and LlamaIndex's
  OpenAI embeddings).
- Cohere / Jina rerank: `POST /v1/rerank`, `POST /v2/rerank`.
- text-embeddings-inference: `POST /embed`, `POST /embed_sparse`, `POST /rerank`, `POST /tokenize`, `GET /info`, and
  `POST /` (what `huggingface_hub.InferenceClient` posts to an endpoint URL).
- `GET /health` and `GET /ready`: 200 while gRPC health says SERVING, 503 otherwise (loading,
  draining); `GET /openapi.json` and `GET /docs`, both made from `ROUTES`.

Every route goes through the same `Core` as gRPC (validation, limits, the scheduler with its
REALTIME/BULK priorities, admission and deadlines, the cache, metrics, drain), with the API keys
of `--api-keys`. Errors keep the error table's meaning in each API's own shape: 400 naming the
field, 401/403, 404 unknown model, 413 too large, 429 with Retry-After, 503 loading or draining.
Vectors are written by orjson from the arrays (no Python loop per float); `encoding_format:
base64` is the little-endian float32 bytes, as OpenAI's.
"""
from __future__ import annotations

import base64
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np
import orjson
from aiohttp import web

from .errors import EmberError, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from .servicers import request_id_of
from .v1 import ember_pb2 as pb

log = logging.getLogger(__name__)

# Each API's error shape: (status, message, kind, field) -> body
OPENAI, COHERE, TEI = "openai", "cohere", "tei"
_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
           "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "FAILED_PRECONDITION": 400,
           "CANCELLED": 499}
_OPENAI_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
                503: "service_unavailable", 504: "timeout", 500: "server_error"}
_TEI_TYPE = {400: "Validation", 401: "Unauthorized", 403: "Unauthorized", 404: "Validation", 413: "Validation",
             429: "Overloaded", 503: "Unhealthy", 504: "Overloaded", 500: "Backend"}


class HttpError(Exception):
    def __init__(self, status: int, message: str, field: str = "", retry_after_s: float = 0.0):
        super().__init__(message)
        self.status, self.message, self.field, self.retry_after_s = status, message, field, retry_after_s


def _error_body(api: str, e: HttpError) -> dict:
    if api == OPENAI:
        return {"error": {"message": e.message, "type": _OPENAI_TYPE.get(e.status, "server_error"),
                          "param": e.field or None, "code": e.status}}
    if api == TEI:
        return {"error": e.message, "error_type": _TEI_TYPE.get(e.status, "Backend")}
    return {"message": e.message}


def _from_ember(e: EmberError) -> HttpError:
    field = e.violations[0].field if isinstance(e, InvalidArgument) else ""
    return HttpError(_STATUS.get(e.code.name, 500), e.message, field,
                     e.retry_after_s if isinstance(e, ResourceExhausted) else 0.0)


def json_response(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                        content_type="application/json", headers=headers)


@dataclass
class _Context:
    """What Core asks of a grpc ServicerContext, for an HTTP request."""

    request: web.Request
    deadline: float | None = None

    def time_remaining(self):
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def invocation_metadata(self):
        rid = self.request.headers.get("x-request-id")
        return (("x-request-id", rid),) if rid else ()


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    api: str
    summary: str
    request: dict | None = None  # the JSON body's fields: name -> (type, description)


# The fields TEI's /embed and /embed_sparse have in common.
_TEI_INPUTS = {
    "inputs": ("string | array of strings", "the texts"), "truncate": ("boolean", "default true"),
    "truncation_direction": ("'Right' | 'Left'", "which end is cut"),
    "prompt_name": ("string", "a named prompt of the model"),
}

ROUTES: list[Route] = [
    Route("POST", "/v1/embeddings", OPENAI, "OpenAI embeddings", {
        "model": ("string", "a model's name (GET /v1/models)"),
        "input": ("string | array of strings", "the texts"),
        "encoding_format": ("'float' | 'base64'", "base64: little-endian float32 bytes"),
        "dimensions": ("integer", "Matryoshka truncation, re-normalized"),
        "user": ("string", "ignored"),
    }),
    Route("GET", "/v1/models", OPENAI, "OpenAI model list"),
    Route("POST", "/v1/rerank", COHERE, "Cohere / Jina rerank", {
        "model": ("string", "a reranker (or embedding model) name; empty: the default"),
        "query": ("string", "the query"),
        "documents": ("array of strings or of {text}", "the documents"),
        "top_n": ("integer", "best results to return (default: all)"),
        "return_documents": ("boolean", "echo each result's document"),
    }),
    Route("POST", "/v2/rerank", COHERE, "Cohere v2 rerank (same as /v1/rerank)"),
    Route("POST", "/embed", TEI, "text-embeddings-inference embed", {
        **_TEI_INPUTS, "normalize": ("boolean", "default true"), "dimensions": ("integer", "Matryoshka"),
    }),
    Route("POST", "/", TEI, "text-embeddings-inference: embed (what huggingface_hub's InferenceClient posts)"),
    Route("POST", "/embed_sparse", TEI, "text-embeddings-inference sparse embed (SPLADE, BGE-M3's lexical weights)", {
        **_TEI_INPUTS,
        "model": ("string", "ember: a model with a sparse output (default: the default embedding model)"),
    }),
    Route("POST", "/rerank", TEI, "text-embeddings-inference rerank", {
        "query": ("string", "the query"), "texts": ("array of strings", "the documents"),
        "raw_scores": ("boolean", "logits instead of sigmoid"), "return_text": ("boolean", "echo each text"),
        "truncate": ("boolean", "default true"),
    }),
    Route("POST", "/tokenize", TEI, "text-embeddings-inference tokenize", {
        "inputs": ("string | array of strings", "the texts"), "prompt_name": ("string", "a named prompt"),
    }),
    Route("GET", "/info", TEI, "text-embeddings-inference model info"),
    Route("GET", "/health", TEI, "200 while the server is SERVING (gRPC health), 503 otherwise"),
    Route("GET", "/ready", TEI, "the same, for readiness probes"),
    Route("GET", "/openapi.json", TEI, "this API as OpenAPI 3"),
    Route("GET", "/docs", TEI, "this API as a page"),
]


def openapi() -> dict:
    paths: dict = {}
    for r in ROUTES:
        op: dict = {"summary": r.summary, "tags": [r.api], "responses": {"200": {"description": "OK"}}}
        if r.request:
            op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object", "properties": {
                name: {"description": f"{kind}: {desc}"} for name, (kind, desc) in r.request.items()}}}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"openapi": "3.0.3", "info": {"title": "ember HTTP API", "version": "1"}, "paths": paths}


def docs_page() -> str:
    rows = []
    for r in ROUTES:
        fields = "".join(f"<li><code>{n}</code> ({k}): {d}</li>" for n, (k, d) in (r.request or {}).items())
        rows.append(f"<h2><code>{r.method} {r.path}</code></h2><p>{r.summary} [{r.api}]</p>"
                    + (f"<ul>{fields}</ul>" if fields else ""))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ember HTTP API</title></head><body>"
            "<h1>ember HTTP API</h1><p>The same as <a href='/openapi.json'>/openapi.json</a>.</p>"
            + "".join(rows) + "</body></html>")


def _texts(value, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise HttpError(400, f"{field}: expected a string or an array of strings (token arrays are not taken)", field)


def _int(body: dict, field: str, default: int = 0) -> int:
    value = body.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f"{field}: expected an integer, got {value!r}", field)
    return value


def _bool(body: dict, field: str) -> bool | None:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise HttpError(400, f"{field}: expected true or false, got {value!r}", field)
    return value


class HttpFrontend:
    """The aiohttp application; `start` serves it on the running (grpc.aio's) event loop."""

    def __init__(self, server):
        self.server = server
        self.core = server.core
        s = server.settings
        self.keys = set(s.all_api_keys())
        self.app = web.Application(client_max_size=s.max_message_bytes, middlewares=[self._errors])
        handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/v1/embeddings": self.openai_embeddings, "/v1/models": self.openai_models,
            "/v1/rerank": self.cohere_rerank, "/v2/rerank": self.cohere_rerank,
            "/embed": self.tei_embed, "/": self.tei_embed, "/embed_sparse": self.tei_embed_sparse,
            "/rerank": self.tei_rerank, "/tokenize": self.tei_tokenize,
            "/info": self.tei_info, "/health": self.health, "/ready": self.health,
            "/openapi.json": self.openapi, "/docs": self.docs,
        }
        for r in ROUTES:
            self.app.router.add_route(r.method, r.path, handlers[r.path])
        self.api_of = {r.path: r.api for r in ROUTES}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                    shutdown_timeout=self.server.settings.drain_seconds)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # ---- plumbing -------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        api = self.api_of.get(request.path, TEI)
        try:
            return await handler(request)
        except HttpError as e:
            err = e
        except EmberError as e:
            err = _from_ember(e)
        except web.HTTPRequestEntityTooLarge as e:
            err = HttpError(413, f"the request body is over {self.server.settings.max_message_bytes} bytes "
                                 f"(--max-message-bytes): {e.text}")
        except web.HTTPException:
            raise
        except Exception:
            rid = request.headers.get("x-request-id", "")
            log.exception("HTTP %s %s failed with an internal error %s", request.method, request.path, rid)
            err = HttpError(500, "internal error")
        headers = {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))} if err.status == 429 else None
        return json_response(_error_body(api, err), err.status, headers)

    def _authorize(self, request: web.Request) -> None:
        if not self.keys:
            return
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if auth[7:].strip() not in self.keys:
            raise PermissionDenied("the API key is not valid")

    async def _body(self, request: web.Request) -> dict:
        self._authorize(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            raise HttpError(400, f"request: the body is not valid JSON ({e})", "request") from None
        if not isinstance(body, dict):
            raise HttpError(400, "request: expected a JSON object", "request")
        return body

    def _context(self, request: web.Request) -> tuple[_Context, str]:
        ctx = _Context(request)
        timeout = request.headers.get("x-request-timeout")  # seconds, as a deadline for the call
        if timeout:
            try:
                ctx.deadline = time.monotonic() + float(timeout)
            except ValueError:
                raise HttpError(400, f"x-request-timeout: {timeout!r} is not a number of seconds") from None
        return ctx, request_id_of("", ctx)

    async def _embed(self, request: web.Request, texts: list[str], model: str, *, dimensions: int = 0,
                     normalize: bool | None = None, truncate: bool | None = None, direction: str = "",
                     prompt_name: str = "", outputs: tuple[int, ...] = (pb.EMBED_OUTPUT_DENSE,)) -> pb.EmbedResponse:
        req = pb.EmbedRequest(model=model, inputs=texts, dimensions=dimensions, prompt_name=prompt_name,
                              encoding=pb.ENCODING_FLOAT32_BYTES, outputs=outputs)
        if normalize is not None:
            req.normalize = normalize
        if truncate is not None:
            req.truncate = truncate
        if direction:
            req.truncation_direction = {"right": pb.TRUNCATION_DIRECTION_RIGHT,
                                        "left": pb.TRUNCATION_DIRECTION_LEFT}[direction]
        ctx, rid = self._context(request)
        return await self.core.embed(req, ctx, rid)

    @staticmethod
    def _vectors(resp: pb.EmbedResponse) -> np.ndarray:
        buf = b"".join(e.packed for e in resp.embeddings)
        return np.frombuffer(buf, dtype="<f4").reshape(len(resp.embeddings), resp.dimensions)

    async def _rerank(self, request: web.Request, model: str, query, documents, top_n: int, return_documents: bool,
                      raw_scores: bool = False, truncate: bool | None = None) -> pb.RerankResponse:
        if not isinstance(query, str):
            raise HttpError(400, "query: expected a string", "query")
        req = pb.RerankRequest(model=model, query=query, documents=documents, top_n=top_n,
                               return_documents=return_documents, raw_scores=raw_scores)
        if truncate is not None:
            req.truncate = truncate
        ctx, rid = self._context(request)
        return await self.core.rerank(req, ctx, rid)

    # ---- OpenAI -----------------------------------------------------------------------------
    async def openai_embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if "input" not in body:
            raise HttpError(400, "input: required (a string or an array of strings)", "input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise HttpError(400, f"encoding_format: {fmt!r}; choose float or base64", "encoding_format")
        model = body.get("model") or ""
        resp = await self._embed(request, _texts(body["input"], "input"), model,
                                 dimensions=_int(body, "dimensions"))
        vectors = self._vectors(resp)
        if fmt == "base64":
            data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                    for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = resp.usage.total_tokens
        return json_response({"object": "list", "data": data, "model": resp.model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def openai_models(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return json_response({"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "ember",
             "task": "embed" if m.task == pb.MODEL_TASK_EMBED else "rerank", "dimensions": m.dimensions,
             "max_tokens": m.max_tokens}
            for m in self.core.list_models().models]})

    # ---- Cohere / Jina rerank ---------------------------------------------------------------
    async def cohere_rerank(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        docs = body.get("documents")
        if not isinstance(docs, list):
            raise HttpError(400, "documents: required, an array of strings or of objects with a text", "documents")
        texts = []
        for i, d in enumerate(docs):
            text = d.get("text") if isinstance(d, dict) else d
            if not isinstance(text, str):
                raise HttpError(400, f"documents[{i}]: expected a string or an object with a text field",
                                f"documents[{i}]")
            texts.append(text)
        return_documents = bool(_bool(body, "return_documents"))
        model = body.get("model") or ""
        resp = await self._rerank(request, model, body.get("query"), texts, _int(body, "top_n"), return_documents)
        results = []
        for r in resp.results:
            item = {"index": r.index, "relevance_score": r.score}
            if return_documents:
                item["document"] = {"text": r.document}
            results.append(item)
        return json_response({"id": resp.request_id, "results": results, "model": resp.model,
                              "usage": {"total_tokens": resp.usage.total_tokens},
                              "meta": {"billed_units": {"search_units": 1}}})

    # ---- text-embeddings-inference ----------------------------------------------------------
    @staticmethod
    def _tei_inputs(body: dict) -> tuple[list[str], str]:
        """A text-embeddings-inference embed body's texts and truncation direction."""
        if "inputs" not in body:
            raise HttpError(400, "inputs: required (a string or an array of strings)", "inputs")
        direction = str(body.get("truncation_direction") or "right").lower()
        if direction not in ("right", "left"):
            raise HttpError(400, f"truncation_direction: {direction!r}; choose Right or Left", "truncation_direction")
        return _texts(body["inputs"], "inputs"), direction

    async def tei_embed(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        texts, direction = self._tei_inputs(body)
        resp = await self._embed(request, texts, "", dimensions=_int(body, "dimensions"),
                                 normalize=_bool(body, "normalize"), truncate=_bool(body, "truncate"),
                                 direction=direction, prompt_name=body.get("prompt_name") or "")
        return json_response(self._vectors(resp))

    async def tei_embed_sparse(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        texts, direction = self._tei_inputs(body)
        model = body.get("model") or ""
        if not isinstance(model, str):
            raise HttpError(400, "model: expected a string", "model")
        resp = await self._embed(request, texts, model, truncate=_bool(body, "truncate"), direction=direction,
                                 prompt_name=body.get("prompt_name") or "", outputs=(pb.EMBED_OUTPUT_SPARSE,))
        return json_response([[{"index": i, "value": v} for i, v in zip(e.sparse.indices, e.sparse.values, strict=True)]
                              for e in resp.embeddings])

    async def tei_rerank(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HttpError(400, "texts: required, an array of strings", "texts")
        return_text = bool(_bool(body, "return_text"))
        resp = await self._rerank(request, "", body.get("query"), texts, 0, return_text,
                                  raw_scores=bool(_bool(body, "raw_scores")), truncate=_bool(body, "truncate"))
        out = []
        for r in resp.results:
            item = {"index": r.index, "score": r.score}
            if return_text:
                item["text"] = r.document
            out.append(item)
        return json_response(out)

    async def tei_tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        texts = _texts(body.get("inputs"), "inputs")
        ctx, rid = self._context(request)
        resp = await self.core.tokenize_rpc(pb.TokenizeRequest(inputs=texts, prompt_name=body.get("prompt_name") or "",
                                                               return_ids=True), ctx, rid)
        model = self.server.registry.models.get(resp.model)
        special = model.tokenizer.special_ids() if model else set()
        return json_response([[{"id": i, "text": text, "special": i in special, "start": None, "stop": None}
                               for i, text in zip(t.ids, model.tokenizer.token_texts(t.ids) if model else
                                                  [""] * len(t.ids), strict=True)] for t in resp.inputs])

    async def tei_info(self, request: web.Request) -> web.Response:
        self._authorize(request)
        name = self.server.registry.default_name("embed") or self.server.registry.default_name("rerank")
        model = self.server.registry.models.get(name) if name else None
        if model is None:
            raise HttpError(503, "no model is loaded yet")
        m = model.manifest
        kind = ({"embedding": {"pooling": m.pooling}} if m.task == "embed" else
                {"reranker": {"id2label": {"0": "score"}}})
        s = self.server.settings
        return json_response({"model_id": m.name, "model_sha": None, "model_dtype": m.dtype, "model_type": kind,
                              "max_concurrent_requests": s.max_queue_items, "max_input_length": m.max_tokens,
                              "max_batch_tokens": model.scheduler.max_batch_tokens,
                              "max_batch_requests": None, "max_client_batch_size": s.max_inputs_per_request,
                              "tokenization_workers": s.tokenizer_threads, "version": "ember",
                              "prompts": m.prompts or None})

    # ---- health and docs --------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        from grpc_health.v1 import health_pb2

        status = self.server.health.status("")
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        return json_response({"status": name}, 200 if status == health_pb2.HealthCheckResponse.SERVING else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(openapi())

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text=docs_page(), content_type="text/html")
