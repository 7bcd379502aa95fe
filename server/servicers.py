"""gRPC servicers: proto ⇄ domain, validation, and the unary paths the streams wrap.

Each RPC validates its request, raises `EmberError`s for bad input, and maps them through the
one table in `errors.py`. Anything else is a bug: logged with the request id, answered INTERNAL.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from . import domain, wire
from .cache import EmbeddingCache, Entry
from .domain import EmbedParams, RerankParams
from .errors import EmberError, InvalidArgument, Unavailable, to_rpc_status
from .ext import kernels
from .manifest import Manifest
from .registry import LoadedModel, Registry
from .scheduler import BULK, REALTIME, Job
from .settings import Settings
from .v1 import ember_pb2 as pb
from .v1 import ember_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    draining: bool = False


@dataclass(frozen=True)
class CorruptMessage:
    """What a request body that does not parse becomes, so it is answered INVALID_ARGUMENT."""

    type_name: str
    error: str
    request_id: str = ""


def safe_parser(message_class) -> Callable[[bytes], object]:
    """A request deserializer that never raises (gRPC would answer UNKNOWN with the exception)."""
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as e:
            return CorruptMessage(message_class.DESCRIPTOR.full_name, str(e))

    return parse


def parsed(req):
    if isinstance(req, CorruptMessage):
        raise InvalidArgument("request", f"the body is not a valid {req.type_name}: {req.error}")
    return req


# ---- proto → domain -----------------------------------------------------------------------
def optional_bool(req, field: str, default: bool) -> bool:
    """An `optional bool` field's value, or its documented default when the client left it unset."""
    return getattr(req, field) if req.HasField(field) else default


def embed_params(req: pb.EmbedRequest, settings: Settings) -> EmbedParams:
    inputs = list(req.inputs)
    domain.check_texts("inputs", inputs, settings.max_inputs_per_request, max_chars=settings.max_input_chars,
                       max_total_chars=settings.max_request_chars)
    domain.check_enum("input_type", req.input_type, range(0, 3))
    domain.check_enum("priority", req.priority, range(0, 3))
    domain.check_enum("encoding", req.encoding, range(0, len(domain.ENCODINGS)))
    outputs = []
    for i, o in enumerate(req.outputs):
        if o not in domain.OUTPUTS:
            raise InvalidArgument(f"outputs[{i}]", f"unknown value {o} (allowed: 1 = DENSE, 2 = SPARSE, "
                                                   "3 = MULTI_VECTOR)")
        if domain.OUTPUTS[o] not in outputs:
            outputs.append(domain.OUTPUTS[o])
    sparse = req.sparse
    if not (math.isfinite(sparse.min_weight) and sparse.min_weight >= 0):
        raise InvalidArgument("sparse.min_weight", f"is {sparse.min_weight}; give a weight >= 0")
    ranges = None
    if req.HasField("int8_ranges"):
        lo = np.asarray(req.int8_ranges.min, dtype=np.float32)
        hi = np.asarray(req.int8_ranges.max, dtype=np.float32)
        if len(lo) != len(hi) or not len(lo):
            raise InvalidArgument("int8_ranges", f"has {len(lo)} mins and {len(hi)} maxes; give one of each per "
                                                 "dimension")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
            raise InvalidArgument("int8_ranges", "every min and max must be finite, each min <= its max")
        ranges = (lo, hi)
    return EmbedParams(
        model=req.model, inputs=inputs, input_type=req.input_type, prompt_name=req.prompt_name,
        normalize=optional_bool(req, "normalize", True), dimensions=req.dimensions,
        truncate=optional_bool(req, "truncate", True),
        direction=domain.direction_of(req.truncation_direction), bulk=req.priority == pb.PRIORITY_BULK,
        encoding=domain.ENCODINGS[req.encoding], outputs=tuple(outputs), sparse_top_k=sparse.top_k,
        sparse_min_weight=sparse.min_weight, return_tokens=sparse.return_tokens, int8_ranges=ranges,
    )


def rerank_params(req: pb.RerankRequest, settings: Settings) -> RerankParams:
    if not req.query:
        raise InvalidArgument("query", "is an empty string; a query needs text")
    if len(req.query) > settings.max_input_chars:
        raise InvalidArgument("query", f"has {len(req.query)} characters; the limit is {settings.max_input_chars}")
    documents = list(req.documents)
    domain.check_texts("documents", documents, settings.max_documents_per_request, what="document",
                       max_chars=settings.max_input_chars, max_total_chars=settings.max_request_chars,
                       already=len(req.query))
    domain.check_enum("priority", req.priority, range(0, 3))
    if req.top_n > len(documents):
        raise InvalidArgument("top_n", f"is {req.top_n}, more than the {len(documents)} documents given "
                                       "(0 = all)")
    return RerankParams(
        model=req.model, query=req.query, documents=documents, top_n=req.top_n,
        return_documents=req.return_documents, raw_scores=req.raw_scores,
        truncate=optional_bool(req, "truncate", True),
        direction=domain.direction_of(req.truncation_direction), bulk=req.priority == pb.PRIORITY_BULK,
        instruction=req.instruction,
    )


def resolve_prompt(m: Manifest, input_type: int, prompt_name: str) -> str:
    """The prompt text to prepend, as sentence-transformers chooses it."""
    if prompt_name:
        if prompt_name not in m.prompts:
            known = ", ".join(sorted(m.prompts)) or "none"
            raise InvalidArgument("prompt_name", f"unknown prompt {prompt_name!r} for model {m.name} (known: {known})")
        return m.prompts[prompt_name]
    name = {domain.QUERY: m.query_prompt_name, domain.DOCUMENT: m.document_prompt_name}.get(input_type, "")
    name = name or m.default_prompt_name
    return m.prompts.get(name, "") if name else ""


def check_dimensions(m: Manifest, dims: int) -> int:
    """0 → the full dimension; else a Matryoshka size the model allows."""
    if dims == 0:
        return m.dimensions
    if dims > m.dimensions:
        raise InvalidArgument("dimensions", f"is {dims}, larger than the model's {m.dimensions}")
    if m.matryoshka_dimensions and dims not in m.matryoshka_dimensions:
        allowed = ", ".join(str(d) for d in m.matryoshka_dimensions)
        raise InvalidArgument("dimensions", f"is {dims}; model {m.name} allows {allowed} (or 0 = {m.dimensions})")
    return dims


def model_outputs(m: Manifest, asked: tuple[str, ...]) -> tuple[str, ...]:
    """The outputs a request gets: those it asked for, else the model's first."""
    missing = [o for o in asked if o not in m.outputs]
    if missing:
        names = ", ".join(o.upper() for o in m.outputs)
        raise InvalidArgument("outputs", f"model {m.name} has no {missing[0].upper()} output (it has {names})")
    return asked or m.outputs[:1]


def dense_encoding(m: Manifest, p: EmbedParams, dims: int, outputs: tuple[str, ...]):
    """(starts, steps) of the request's int8/uint8 encoding, else None; refuses what cannot be done."""
    if p.encoding not in ("int8", "uint8"):
        return None
    if "multi_vector" in outputs:
        raise InvalidArgument("encoding", f"{p.encoding.upper()} is for dense vectors; multi_vector rows come as "
                                          "FLOAT, FLOAT32_BYTES, FLOAT16, BFLOAT16, BINARY or UBINARY")
    if "dense" not in outputs:
        return None
    if p.int8_ranges is not None:
        lo, hi = p.int8_ranges
        if len(lo) != dims:
            raise InvalidArgument("int8_ranges", f"has {len(lo)} values per end; the vectors have {dims} dimensions")
    else:
        pair = m.quantization_ranges.get(str(dims)) if p.normalize else None
        if pair is None:
            why = "for vectors with normalize=false" if not p.normalize else f"for {dims} dimensions"
            raise InvalidArgument("encoding", f"{p.encoding.upper()} needs ranges: model {m.name} has none calibrated "
                                              f"{why}; pass int8_ranges, or calibrate the model (ember calibrate "
                                              "MODEL_DIR --texts FILE)")
        lo, hi = (np.asarray(v, dtype=np.float32) for v in pair)
    steps = (hi - lo) / np.float32(255)
    return lo, np.where(steps == 0, np.float32(1), steps).astype(np.float32)


def encodings_of(m: Manifest) -> list[int]:
    """The Encoding values Embed can answer for `m` without int8_ranges (ModelInfo.encodings)."""
    calibrated = str(m.dimensions) in m.quantization_ranges
    return [v for v, name in domain.ENCODINGS.items() if v and (calibrated or name not in ("int8", "uint8"))]


def sparse_bytes(model: LoadedModel, sparse, p: EmbedParams) -> bytes:
    """A SparseVector's bytes: the weights over min_weight, the top_k largest, by id ascending."""
    ids, weights = sparse
    if p.sparse_min_weight:
        keep = weights >= p.sparse_min_weight
        ids, weights = ids[keep], weights[keep]
    if p.sparse_top_k and len(ids) > p.sparse_top_k:
        top = np.sort(np.argsort(-weights, kind="stable")[:p.sparse_top_k])
        ids, weights = ids[top], weights[top]
    msg = pb.SparseVector(indices=ids.tolist(), values=weights.tolist())
    if p.return_tokens:
        msg.tokens.extend(model.tokenizer.token_texts(ids))
    return msg.SerializeToString()


def multi_vector_bytes(vectors: np.ndarray, encoding: str) -> bytes:
    rows, dims = vectors.shape
    if encoding in ("float", "float32"):
        data = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    else:
        data = kernels.encode(np.ascontiguousarray(vectors, dtype=np.float32), encoding).tobytes()
    return pb.MultiVector(rows=rows, dimensions=dims, packed=data).SerializeToString()


def finish_embeddings(vectors: np.ndarray, dims: int, normalize: bool) -> np.ndarray:
    if dims < vectors.shape[1]:
        return kernels.matryoshka(vectors, dims, normalize)
    return kernels.l2_normalize(vectors) if normalize else vectors


def _timing(t0: int, tokenize_s: float, queue_s: float, inference_s: float) -> pb.Timing:
    return pb.Timing(queue_ns=int(queue_s * 1e9), tokenize_ns=int(tokenize_s * 1e9),
                     inference_ns=int(inference_s * 1e9), total_ns=time.perf_counter_ns() - t0)


_model = contextvars.ContextVar("ember_model", default="")  # the model a call resolved to, for metrics
request_id_var = contextvars.ContextVar("ember_request_id", default="")  # for every log line of the call
_used = contextvars.ContextVar("ember_used_model", default=None)  # the LoadedModel a call holds


def use(model) -> None:
    """Mark `model` as held by the current call until it ends (an unload waits for its users)."""
    _model.set(model.name)
    model.users += 1
    _used.set(model)


def counted(rpc: str, in_flight: bool = True):
    """Wrap a Core coroutine: count it in `in_flight` while it runs, and in the metrics when done."""
    def wrap(method):
        @functools.wraps(method)
        async def wrapper(self, req, context, request_id: str):
            t0 = time.perf_counter()
            code, detail = "OK", ""
            request_id_var.set(request_id)
            _used.set(None)
            _model.set("")
            self.in_flight += in_flight
            if self.in_flight > 1:
                self.overlap_at = time.monotonic()
            try:
                return await method(self, req, context, request_id)
            except EmberError as e:
                code, detail = e.code.name, e.message
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                raise
            finally:
                self.in_flight -= in_flight
                held = _used.get()
                if held is not None:
                    held.users -= 1
                elapsed = time.perf_counter() - t0
                if self.metrics is not None:
                    m = self.metrics
                    m.of(m.requests, rpc, _model.get(), code).inc()
                    m.of(m.request_seconds, rpc).observe(elapsed)
                if code == "OK":
                    log.debug("%s model=%s ok in %.2f ms", rpc, _model.get(), elapsed * 1e3)
                elif code != "INTERNAL":  # INTERNAL is logged with its traceback by `guarded`
                    log.warning("%s model=%s %s in %.2f ms: %s", rpc, _model.get() or "-", code, elapsed * 1e3,
                                detail or "the client went away")

        return wrapper
    return wrap


class Core:
    """The unary paths, shared by the three services and their streams."""

    def __init__(self, registry: Registry, settings: Settings, state: ServerState):
        self.registry = registry
        self.settings = settings
        self.state = state
        self.tokenize_pool = ThreadPoolExecutor(settings.tokenizer_threads, thread_name_prefix="ember-tokenize")
        self.in_flight = 0  # Embed/Rerank calls (and stream messages) being answered now
        self.overlap_at = -math.inf  # when two of them were last in flight together (monotonic s)
        self.metrics = None  # set by the server when metrics are on
        self.cache = EmbeddingCache(settings.cache_bytes, settings.cache_ttl_seconds) if settings.cache_bytes else None
        self.stream_readers: set[asyncio.Task] = set()  # the reader task of every open stream

    def stop_streams(self) -> int:
        """Drain: every open stream stops reading, answers what it read, then ends UNAVAILABLE."""
        readers = list(self.stream_readers)
        for reader in readers:
            reader.cancel()
        return len(readers)

    async def infer(self, model: LoadedModel, toks: list, priority: int, context,
                    outputs: tuple[str, ...] | None = None) -> Job:
        """Hand tokenized items to the model: on the loop when nothing else is in flight, else queued.

        The inline path is only taken by a call that is alone: the yield lets every call that
        arrived with it reach this point first, so concurrent calls still meet in the queue and
        batch together. It also wants the model idle for --inline-idle-us, since a call that comes
        right after a run may be one of a burst, unless no two calls were in flight together for
        --inline-alone-ms: then it is a client's next call in a loop. Either path refuses a call
        whose deadline has already passed.
        """
        deadline = self.deadline(context)
        s = self.settings
        if s.inline_max_tokens and self.in_flight == 1:
            await asyncio.sleep(0)
            if self.in_flight == 1:
                alone = s.inline_alone_ms and time.monotonic() - self.overlap_at >= s.inline_alone_ms / 1e3
                job = model.scheduler.run_inline(toks, priority=priority, deadline=deadline,
                                                 min_idle_s=0.0 if alone else s.inline_idle_us / 1e6,
                                                 outputs=outputs)
                if job is not None:
                    return job
        return model.scheduler.submit(toks, priority=priority, deadline=deadline, outputs=outputs)

    def accepting(self) -> None:
        if self.state.draining:
            raise Unavailable("the server is shutting down; retry on another replica")

    @staticmethod
    def deadline(context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    async def tokenize(self, fn: Callable, *args, chars: int, **kwargs):
        """Tokenize in the tokenizer pool; small requests inline (a thread hop costs more than they do)."""
        t = time.perf_counter()
        if chars <= self.settings.inline_tokenize_chars:
            out = fn(*args, **kwargs)
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.tokenize_pool, functools.partial(fn, *args, **kwargs))
        return out, time.perf_counter() - t

    @counted("Embed")
    async def embed(self, req: pb.EmbedRequest, context, request_id: str) -> pb.EmbedResponse:
        t0 = time.perf_counter_ns()
        self.accepting()
        p = embed_params(parsed(req), self.settings)
        model = self.registry.get(p.model, "embed")
        use(model)
        m = model.manifest
        prompt = resolve_prompt(m, p.input_type, p.prompt_name)
        outputs = model_outputs(m, p.outputs)
        dense = "dense" in outputs
        dims = check_dimensions(m, p.dimensions) if dense else 0
        int8 = dense_encoding(m, p, dims, outputs)
        texts = [prompt + t for t in p.inputs] if prompt else p.inputs
        extras = None
        if outputs == ("dense",):
            raw, counts, cut, tok_s, job = await self._pooled(model, p, prompt, texts, context)
        else:
            toks, tok_s = await self.tokenize(model.tokenizer.encode, texts, truncate=p.truncate,
                                              direction=p.direction, chars=sum(map(len, texts)))
            job = await self.infer(model, toks, BULK if p.bulk else REALTIME, context, outputs=outputs)
            rows = await job.future
            counts, cut = [t.tokens for t in toks], [t.truncated for t in toks]
            raw = np.stack([r.dense for r in rows]) if dense else None
            extras = [self._extras(model, r, p) for r in rows]
        vectors = finish_embeddings(raw, dims, p.normalize) if dense else None
        if dense and p.encoding not in ("float", "float32"):
            vectors = kernels.encode(vectors, p.encoding, *(int8 or ()))
        resp = wire.embed_response(vectors, counts, cut, p.packed, extras)
        resp.model, resp.dimensions, resp.request_id = model.name, dims, request_id
        if "sparse" in outputs:
            resp.sparse_dimensions = model.tokenizer.vocab_size()
        resp.usage.prompt_tokens = resp.usage.total_tokens = sum(counts)
        resp.timing.CopyFrom(_timing(t0, tok_s, job.queue_s() if job else 0.0, job.inference_s if job else 0.0))
        self._observe(model.name, tok_s, job, resp.usage.total_tokens)
        return resp

    async def _pooled(self, model: LoadedModel, p: EmbedParams, prompt: str, texts: list[str], context):
        """Pooled vectors (before truncation/normalization), token counts and truncation flags for
        `texts`: from the cache where it has them, the rest tokenized and run. A request that hits
        for every input never reaches the tokenizer or the queue."""
        n = len(texts)
        keys = entries = None
        todo = list(range(n))
        if self.cache is not None:
            model_id = model.name + ":" + model.manifest.files.get(model.manifest.onnx_file, "")
            keys = [self.cache.key(model_id, prompt, p.truncate, p.direction, t) for t in p.inputs]
            entries = [self.cache.get(k) for k in keys]
            todo = [i for i, e in enumerate(entries) if e is None]
            if self.metrics is not None:
                m = self.metrics
                m.of(m.cache_hits, model.name).inc(n - len(todo))
                m.of(m.cache_misses, model.name).inc(len(todo))
        tok_s, job, out, toks = 0.0, None, None, []
        if todo:
            missing = [texts[i] for i in todo] if len(todo) < n else texts
            toks, tok_s = await self.tokenize(model.tokenizer.encode, missing, truncate=p.truncate,
                                              direction=p.direction, chars=sum(map(len, missing)))
            job = await self.infer(model, toks, BULK if p.bulk else REALTIME, context)
            out = await job.future
        if entries is None:
            return out, [t.tokens for t in toks], [t.truncated for t in toks], tok_s, job
        for row, i in enumerate(todo):
            entries[i] = Entry(out[row].copy(), toks[row].tokens, toks[row].truncated)
            self.cache.put(keys[i], entries[i])
        raw = np.stack([e.vector for e in entries])
        return raw, [e.tokens for e in entries], [e.truncated for e in entries], tok_s, job

    @staticmethod
    def _extras(model: LoadedModel, row, p: EmbedParams) -> bytes:
        """One input's sparse and multi-vector outputs as Embedding field bytes."""
        out = b""
        if row.sparse is not None:
            out += wire.field_bytes(pb.Embedding, "sparse", sparse_bytes(model, row.sparse, p))
        if row.multi_vector is not None:
            out += wire.field_bytes(pb.Embedding, "multi_vector", multi_vector_bytes(row.multi_vector, p.encoding))
        return out

    def _observe(self, model: str, tok_s: float, job, tokens: int) -> None:
        m = self.metrics
        if m is not None:
            if job is not None:  # None: every input came from the cache
                m.of(m.tokenize_seconds, model).observe(tok_s)
                m.of(m.queue_seconds, model).observe(job.queue_s())
            m.of(m.input_tokens, model).inc(tokens)

    @counted("Rerank")
    async def rerank(self, req: pb.RerankRequest, context, request_id: str) -> pb.RerankResponse:
        t0 = time.perf_counter_ns()
        self.accepting()
        p = rerank_params(parsed(req), self.settings)
        model = self.registry.get(p.model, "rerank")
        use(model)
        priority = BULK if p.bulk else REALTIME
        if p.instruction and not model.manifest.rerank_template:
            raise InvalidArgument("instruction", f"model {model.name} takes no instruction (only rerankers with a "
                                                 "prompt template do); leave it empty")
        if model.manifest.task == "rerank":
            toks, tok_s = await self.tokenize(model.tokenizer.encode_pairs, p.query, p.documents,
                                              truncate=p.truncate, direction=p.direction, instruction=p.instruction,
                                              chars=len(p.query) * len(p.documents) + sum(map(len, p.documents)))
            job = await self.infer(model, toks, priority, context)
            logits = await job.future
            scores = logits if p.raw_scores else kernels.sigmoid(logits)
            doc_toks = toks
        else:
            scores, toks, tok_s, job = await self._vector_scores(model, p, priority, context)
            doc_toks = toks[1:]
        order = kernels.top_n(np.ascontiguousarray(scores, dtype=np.float32), p.top_n)
        results = []
        for i in order.tolist():
            r = pb.RerankResult(index=i, score=float(scores[i]), tokens=doc_toks[i].tokens,
                                truncated=doc_toks[i].truncated)
            if p.return_documents:
                r.document = p.documents[i]
            results.append(r)
        n_tokens = sum(t.tokens for t in toks)
        self._observe(model.name, tok_s, job, n_tokens)
        return pb.RerankResponse(
            model=model.name, results=results, request_id=request_id,
            usage=pb.Usage(prompt_tokens=n_tokens, total_tokens=n_tokens),
            timing=_timing(t0, tok_s, job.queue_s(), job.inference_s),
        )

    async def _vector_scores(self, model: LoadedModel, p: RerankParams, priority: int, context):
        """An embedding model reranks by cosine similarity of query and document embeddings; one
        with multi-vectors (BGE-M3) by ColBERT's MaxSim: each query token's best dot product over
        the document's tokens, averaged over the query's tokens (FlagEmbedding's colbert_score); a
        SPLADE model by the dot product of the sparse vectors."""
        m = model.manifest
        q_prompt = resolve_prompt(m, domain.QUERY, "")
        d_prompt = resolve_prompt(m, domain.DOCUMENT, "")

        def encode():
            tok = model.tokenizer
            q = tok.encode([q_prompt + p.query], truncate=p.truncate, direction=p.direction, field="query")
            # A too-long query is reported as `query[0]`: name it `query`.
            return q + tok.encode([d_prompt + d for d in p.documents], truncate=p.truncate, direction=p.direction,
                                  field="documents")

        toks, tok_s = await self.tokenize(encode, chars=len(p.query) + sum(map(len, p.documents)))
        if "multi_vector" in m.outputs:
            job = await self.infer(model, toks, priority, context, outputs=("multi_vector",))
            rows = [r.multi_vector for r in await job.future]
            q = rows[0]
            scores = np.array([(q @ d.T).max(axis=1).sum() / len(q) if len(q) and len(d) else 0.0 for d in rows[1:]],
                              dtype=np.float32)
            return scores, toks, tok_s, job
        job = await self.infer(model, toks, priority, context)
        if "dense" not in m.outputs:  # SPLADE: the dot product of the sparse vectors, as SparseEncoder scores
            weights = await job.future
            return (weights[1:] @ weights[0]).astype(np.float32), toks, tok_s, job
        vectors = kernels.l2_normalize(await job.future)
        scores = vectors[1:] @ vectors[0]
        return scores.astype(np.float32), toks, tok_s, job

    @counted("Tokenize", in_flight=False)
    async def tokenize_rpc(self, req: pb.TokenizeRequest, context, request_id: str) -> pb.TokenizeResponse:
        self.accepting()
        parsed(req)
        inputs = list(req.inputs)
        domain.check_texts("inputs", inputs, self.settings.max_inputs_per_request,
                           max_chars=self.settings.max_input_chars, max_total_chars=self.settings.max_request_chars)
        domain.check_enum("input_type", req.input_type, range(0, 3))
        model = self.registry.get(req.model, "any")
        use(model)
        prompt = resolve_prompt(model.manifest, req.input_type, req.prompt_name) \
            if model.manifest.task == "embed" else ""
        texts = [prompt + t for t in inputs] if prompt else inputs
        toks, _ = await self.tokenize(model.tokenizer.encode, texts,
                                      truncate=optional_bool(req, "truncate", True),
                                      direction=domain.direction_of(req.truncation_direction),
                                      chars=sum(map(len, texts)))
        return pb.TokenizeResponse(model=model.name, inputs=[
            pb.TokenizedInput(tokens=t.tokens, truncated=t.truncated, ids=t.ids.tolist() if req.return_ids else [])
            for t in toks
        ])

    def list_models(self) -> pb.ListModelsResponse:
        d_embed, d_rerank = self.registry.default_name("embed"), self.registry.default_name("rerank")
        out = []
        for name in sorted(self.registry.models):
            model = self.registry.models[name]
            m = model.manifest
            out.append(pb.ModelInfo(
                name=name, task=pb.MODEL_TASK_EMBED if m.task == "embed" else pb.MODEL_TASK_RERANK,
                dimensions=m.dimensions, max_tokens=m.max_tokens, pooling=m.pooling if m.task == "embed" else "",
                normalize=m.normalize, matryoshka_dimensions=list(m.matryoshka_dimensions), prompts=m.prompts,
                dtype=m.dtype, providers=model.engine.providers, unavailable_providers=model.engine.unavailable,
                is_default_embed=name == d_embed, is_default_rerank=name == d_rerank, ready=model.ready,
                architecture=m.architecture, degraded=getattr(model.engine, "degraded", False),
                fallback_batches=getattr(model.engine, "fallback_batches", 0),
                accelerator_errors=getattr(model.engine, "primary_errors", 0),
                max_batch_tokens=model.scheduler.max_batch_tokens, lanes=len(model.scheduler.lanes),
                outputs=[k for o in m.outputs for k, v in domain.OUTPUTS.items() if v == o]
                if m.task == "embed" else [],
                encodings=encodings_of(m) if m.task == "embed" and "dense" in m.outputs else [],
            ))
        return pb.ListModelsResponse(models=out)


# ---- error handling -----------------------------------------------------------------------
def request_id_of(req_id: str, context) -> str:
    if req_id:
        return req_id
    for k, v in context.invocation_metadata() or ():
        if k == "x-request-id" and v:
            return v
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}"


# Ids ember makes: a random prefix per process and a counter, 16 hex digits like a uuid4's first
# 16 but without the uuid's os.urandom call per request (tens of µs of a single text's latency).
_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


async def guarded(context, request_id: str, rpc: str, work: Awaitable, in_stream: bool = False):
    """Run one unary path; answer EmberErrors by the table, anything else INTERNAL (a bug).

    In a stream (`in_stream`), the status that ends it names the failing message's request_id,
    in its details and in the `ember-request-id` trailer."""
    try:
        return await work
    except EmberError as e:
        proto = to_rpc_status(e)
        extra = ()
        if in_stream:
            proto.message = f"message request_id={request_id}: {proto.message}"
            extra = (("ember-request-id", request_id),)
        status = rpc_status.to_status(proto)
        await context.abort(status.code, status.details, tuple(status.trailing_metadata) + extra)
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception:
        log.exception("%s %s failed with an internal error", rpc, request_id)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


DRAINED = ("the server is shutting down: every message read so far was answered; reconnect (another replica "
           "or this one once it is back) and send the rest again")
_END = object()


async def stream(requests: AsyncIterator, context, limit: int, rpc: str,
                 one: Callable[[object, str], Awaitable], readers: set | None = None) -> AsyncIterator:
    """A stream as a thin wrapper over the unary path: one response per request, in order.

    Reading and answering are decoupled: a reader task takes messages and starts each one's work;
    this generator sends each answer as soon as it and every earlier one are done, whatever the
    client does next (a client that waits for an answer before it sends the next message is
    answered). At most `limit` messages are in flight; while that many are, the reader stops, so
    HTTP/2 flow control pushes back on a fast client instead of the server buffering. The first
    failing message ends the stream with its status (naming its request_id), after every earlier
    response was sent. The reader is put in `readers` while it runs: a drain cancels it (see
    `Core.stop_streams`), and the stream then answers what it read and ends with UNAVAILABLE.
    """
    slots = asyncio.Semaphore(limit)
    started: asyncio.Queue = asyncio.Queue()  # (rid, task) in arrival order, then _END or an exception
    drained = False

    async def read() -> None:
        nonlocal drained
        messages = requests.__aiter__()
        try:
            while True:
                await slots.acquire()  # held by the message until its answer is taken
                try:
                    req = await messages.__anext__()
                except StopAsyncIteration:
                    break
                rid = request_id_of(getattr(req, "request_id", ""), context)
                started.put_nowait((rid, asyncio.ensure_future(one(req, rid))))
            started.put_nowait(_END)
        except asyncio.CancelledError:
            drained = True
            started.put_nowait(_END)
        except Exception as e:  # the transport failed while reading: end the stream with it
            started.put_nowait(e)

    reader = asyncio.ensure_future(read())
    if readers is not None:
        readers.add(reader)
    try:
        while True:
            item = await started.get()
            if item is _END:
                if drained:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINED)
                return
            if isinstance(item, BaseException):
                raise item
            rid, task = item
            resp = await guarded(context, rid, rpc, task, in_stream=True)
            slots.release()
            yield resp
    finally:
        if readers is not None:
            readers.discard(reader)
        reader.cancel()
        while not started.empty():
            item = started.get_nowait()
            if isinstance(item, tuple):
                item[1].cancel()


def add_to_server(servicer, service_name: str, server) -> None:
    """Register a servicer from the service's descriptor, with request parsers that never raise.

    Same RPC names and shapes as the generated `add_*Servicer_to_server`; only the request
    deserializer differs, so a corrupt body is answered INVALID_ARGUMENT instead of UNKNOWN.
    """
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler}[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=safe_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class EmbedderServicer(pb_grpc.EmbedderServicer):
    def __init__(self, core: Core):
        self.core = core

    async def Embed(self, request, context):
        rid = request_id_of(request.request_id, context)
        return await guarded(context, rid, "Embed", self.core.embed(request, context, rid))

    async def EmbedStream(self, request_iterator, context):
        async for resp in stream(request_iterator, context, self.core.settings.stream_max_in_flight, "EmbedStream",
                                 lambda req, rid: self.core.embed(req, context, rid), self.core.stream_readers):
            yield resp


class RerankerServicer(pb_grpc.RerankerServicer):
    def __init__(self, core: Core):
        self.core = core

    async def Rerank(self, request, context):
        rid = request_id_of(request.request_id, context)
        return await guarded(context, rid, "Rerank", self.core.rerank(request, context, rid))

    async def RerankStream(self, request_iterator, context):
        async for resp in stream(request_iterator, context, self.core.settings.stream_max_in_flight, "RerankStream",
                                 lambda req, rid: self.core.rerank(req, context, rid), self.core.stream_readers):
            yield resp


class ModelsServicer(pb_grpc.ModelsServicer):
    def __init__(self, core: Core):
        self.core = core

    async def ListModels(self, request, context):
        async def answer():
            parsed(request)
            return self.core.list_models()

        return await guarded(context, request_id_of("", context), "ListModels", answer())

    async def Tokenize(self, request, context):
        rid = request_id_of("", context)
        return await guarded(context, rid, "Tokenize", self.core.tokenize_rpc(request, context, rid))


class AdminServicer(pb_grpc.AdminServicer):
    """Live model management; the server (app.EmberServer) does the work."""

    def __init__(self, server):
        self.server = server

    def _info(self, name: str) -> pb.ModelResponse:
        infos = {m.name: m for m in self.server.core.list_models().models}
        resp = pb.ModelResponse(name=name)
        if name in infos:
            resp.model.CopyFrom(infos[name])
        return resp

    async def _guarded(self, context, rpc: str, request, op: Callable[[str], Awaitable]):
        """Run op(model name) under `guarded`, the request's body checked inside it too."""
        async def work():
            return await op(parsed(request).name)

        return await guarded(context, request_id_of("", context), rpc, work())

    async def LoadModel(self, request, context):
        await self._guarded(context, "LoadModel", request, self.server.load_model)
        return self._info(request.name)

    async def ReloadModel(self, request, context):
        await self._guarded(context, "ReloadModel", request, self.server.reload_model)
        return self._info(request.name)

    async def UnloadModel(self, request, context):
        await self._guarded(context, "UnloadModel", request, self.server.unload_model)
        return pb.ModelResponse(name=request.name)

    async def Rescan(self, request, context):
        async def work():
            parsed(request)
            return await self.server.rescan()

        out = await guarded(context, request_id_of("", context), "Rescan", work())
        return pb.RescanResponse(loaded=out["loaded"], reloaded=out["reloaded"], unloaded=out["unloaded"],
                                 refused=out["refused"])
