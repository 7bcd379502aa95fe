from __future__ import annotations

import asyncio
import collections
import itertools
import heapq
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence

import grpc
import numpy as np

from . import _wire
from .v1 import ember_pb2 as pb
from .v1 import ember_pb2_grpc as pb_grpc

_INPUT_TYPE = {None: pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}
_PRIORITY = {"realtime": pb.PRIORITY_REALTIME, "bulk": pb.PRIORITY_BULK}
_DIRECTION = {"right": pb.TRUNCATION_DIRECTION_RIGHT, "left": pb.TRUNCATION_DIRECTION_LEFT}
# encoding= of embed / embed_stream / encode: the wire encoding and the dtype of the rows returned.
# bfloat16 rows come as their uint16 bits (view them as ml_dtypes.bfloat16, or torch.bfloat16);
# binary / ubinary rows hold ceil(dimensions / 8) bytes of sign bits (as sentence-transformers').
ENCODINGS = {"float32": (pb.ENCODING_FLOAT32_BYTES, "<f4"), "float16": (pb.ENCODING_FLOAT16, "<f2"),
             "bfloat16": (pb.ENCODING_BFLOAT16, "<u2"), "int8": (pb.ENCODING_INT8, "i1"),
             "uint8": (pb.ENCODING_UINT8, "u1"), "binary": (pb.ENCODING_BINARY, "i1"),
             "ubinary": (pb.ENCODING_UBINARY, "u1")}
_OUTPUTS = {"dense": pb.EMBED_OUTPUT_DENSE, "sparse": pb.EMBED_OUTPUT_SPARSE,
            "multi_vector": pb.EMBED_OUTPUT_MULTI_VECTOR}
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            ("grpc.lb_policy_name", "round_robin")]  # every address a target resolves to gets calls in turn
# Worth another try: refused or overloaded (the server's RetryInfo says when), or cut off while a
# replica shut down. Embed and Rerank are idempotent, so a retry never does harm.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)


def channel_target(target: str | Sequence[str]) -> str:
    """A gRPC target for one address, a `dns:///name:port` (all its A records), or a list of
    "ip:port" replicas (the `ipv4:`/`ipv6:` schemes), which the channel balances round-robin."""
    if isinstance(target, str):
        return target
    addresses = list(target)
    if len(addresses) == 1:
        return addresses[0]
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    return f"{scheme}:" + ",".join(addresses)


def _channel(module, target: str, credentials, options):
    """A channel from `module` (grpc or grpc.aio): secure with `credentials`, else plaintext."""
    if credentials is not None:
        return module.secure_channel(target, credentials, options=options)
    return module.insecure_channel(target, options=options)


def _authority_host(target: str | Sequence[str]) -> str:
    """The host name a target names (what TLS checks the certificate against), "" for address lists."""
    if not isinstance(target, str) or target.startswith(("ipv4:", "ipv6:")):
        return ""
    hostport = target.split("///", 1)[1] if "///" in target else target.removeprefix("dns:")
    return hostport.rpartition(":")[0] or hostport


def replicas(target: str | Sequence[str]) -> list[str]:
    """The addresses a target names: a list as given, each address of an `ipv4:`/`ipv6:` target,
    every A/AAAA record of a `dns:///name:port` target (a Kubernetes headless Service's ready pods),
    else the target itself."""
    if not isinstance(target, str):
        return list(target)
    if target.startswith(("ipv4:", "ipv6:")):
        return target.split(":", 1)[1].split(",")
    if target.startswith("dns:"):
        hostport = target.split("///", 1)[1] if "///" in target else target[len("dns:"):]
        host, _, port = hostport.rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            return [target]
        found = sorted({(f"[{ai[4][0]}]" if ai[0] == socket.AF_INET6 else ai[4][0]) + f":{port}" for ai in infos})
        return found or [target]
    return [target]


def retry_delay(err: grpc.RpcError, attempt: int, backoff: float) -> float:
    """The server's RetryInfo delay when it sent one, else exponential backoff with jitter."""
    try:
        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                delay = _wire.retry_delay_s(value)
                if delay is not None:
                    return delay
    except Exception:  # no details, or not readable: fall back to backoff
        pass
    return min(backoff * (2 ** attempt), 2.0) * (0.5 + random.random() / 2)


class _RetryBudget:
    """One call's retries: at most `client.retries` more attempts, all within `client.timeout`."""

    def __init__(self, client):
        self.client = client
        self.end = None if client.timeout is None else time.monotonic() + client.timeout
        self.attempt = 0

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.001, self.end - time.monotonic())

    def next_delay(self, err: grpc.RpcError) -> float | None:
        """Seconds to wait before the next attempt, or None: give up and raise `err`."""
        if err.code() not in RETRYABLE or self.attempt >= self.client.retries:
            return None
        delay = retry_delay(err, self.attempt, self.client.backoff)
        if self.end is not None and time.monotonic() + delay >= self.end:
            return None
        self.attempt += 1
        return delay


def _call_with_retries(client, fn, req):
    """Call fn(req); retry RETRYABLE codes up to client.retries times, within client.timeout overall."""
    budget = _RetryBudget(client)
    while True:
        try:
            return fn(req, timeout=budget.remaining(), metadata=client.metadata)
        except grpc.RpcError as e:
            delay = budget.next_delay(e)
            if delay is None:
                raise
            time.sleep(delay)


async def _acall_with_retries(client, fn, req):
    budget = _RetryBudget(client)
    while True:
        try:
            return await fn(req, timeout=budget.remaining(), metadata=client.metadata)
        except grpc.RpcError as e:
            delay = budget.next_delay(e)
            if delay is None:
                raise
            await asyncio.sleep(delay)


STREAM_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _resume_delay(client, err: grpc.RpcError, failures: int) -> float:
    """How long to wait before a stream that ended with `err` is resumed on a new one (`failures`
    ends in a row so far); raises `err` when it may not be (not retryable, or out of retries)."""
    if err.code() not in STREAM_RETRYABLE or failures >= client.retries:
        raise err
    client.stream_resumes += 1
    return retry_delay(err, failures, client.backoff)


def _answered_in_order(sent: collections.deque, request_id: str) -> int:
    """Pop the oldest message a stream is waiting on and return its number; an answer to any other
    message is an error (a stream answers in the order it was sent)."""
    i, _ = sent.popleft()
    if request_id != str(i):
        raise RuntimeError(f"EmbedStream answered message {request_id!r} where {i} was due")
    return i


class _Resend:
    """The chunks of one embed_stream: those sent and not yet answered, to send again on a new
    stream after a retryable end, and the iterator of those not sent yet, shared by every stream
    of the call. A stream's requests thread pulls from it under `pulling` (the caller's iterator
    may block; nothing else waits on that lock), and a chunk pulled by a stream given up meanwhile
    is carried over to the next one."""

    def __init__(self, chunks: Iterator[tuple[int, list[str]]]):
        self.chunks = chunks
        self.sent: collections.deque[tuple[int, list[str]]] = collections.deque()
        self.carried: collections.deque[tuple[int, list[str]]] = collections.deque()
        self.lock = threading.Lock()  # sent, carried, exhausted; held briefly
        self.pulling = threading.Lock()
        self.exhausted = False

    def start(self) -> list[tuple[int, list[str]]]:
        """A new stream begins: what it must send first (the unanswered chunks, in order)."""
        with self.lock:
            return list(self.sent)

    def take(self, done: threading.Event) -> tuple[int, list[str]] | None:
        """The next chunk for the stream whose `done` this is, or None (no more, or given up)."""
        with self.pulling:
            with self.lock:
                item = self.carried.popleft() if self.carried else None
            if item is None and not self.exhausted and not done.is_set():
                item = next(self.chunks, None)
            with self.lock:
                if item is None:
                    self.exhausted = self.exhausted or not done.is_set()
                    return None
                if done.is_set():
                    self.carried.append(item)
                    return None
                self.sent.append(item)
                return item

    def answered(self, request_id: str) -> None:
        with self.lock:
            _answered_in_order(self.sent, request_id)

    def finished(self) -> bool:
        with self.lock:
            return self.exhausted and not self.sent and not self.carried


class _PoolState:
    """What StreamPool (threads) and AsyncStreamPool (asyncio) share: the queue of batches, the
    answers waiting for their turn, and what a stream does with an answer, an end and an error.
    Every method here is called with the pool's lock (its `cond`) held."""

    def __init__(self, client, streams: int, window: int):
        self.client, self.streams, self.window = client, streams, window
        self.addresses = replicas(client.target)
        self.results: dict[int, np.ndarray] = {}
        self.requeued: list[tuple[int, list[str]]] = []  # a heap: the lowest index first
        self.next_out = 0  # the batch the caller waits for
        self.taken = 0  # batches taken from the source so far
        self.exhausted = False
        self.error: BaseException | None = None
        self.last_error: BaseException | None = None
        self.alive = 0
        self.answers_by_replica: dict[str, int] = {}

    def _finished(self) -> bool:
        return self.exhausted and not self.requeued and self.next_out + len(self.results) >= self.taken

    def _ahead(self) -> bool:
        """Whether the source may be read further: the caller is not too far behind."""
        return self.taken - self.next_out < self.streams * self.window * 4

    def _answered(self, i: int, resp, address: str, options: dict) -> None:
        if i >= self.next_out and i not in self.results:
            self.results[i] = embeddings_array(resp, options.get("encoding", "float32"))
            self.answers_by_replica[address] = self.answers_by_replica.get(address, 0) + 1

    def _give_back(self, mine: collections.deque) -> None:
        """A stream's unanswered batches, back to the queue for any stream."""
        for item in mine:
            heapq.heappush(self.requeued, item)
        mine.clear()

    def _stream_failed(self, err: grpc.RpcError, failures: int) -> float:
        """A stream ended with `err` after `failures` tries in a row without an answer: the delay
        before its replica is tried again; raises it where it is not retryable or tried too often."""
        if err.code() not in STREAM_RETRYABLE or failures > self.client.retries:
            raise err
        self.client.stream_resumes += 1
        return retry_delay(err, failures - 1, self.client.backoff)

    def _stream_gave_up(self, err: BaseException) -> None:
        """A stream is done for; the others carry on without it unless the error is not retryable."""
        self.last_error = err
        if not isinstance(err, grpc.RpcError) or err.code() not in STREAM_RETRYABLE:
            self.error = err

    def _next_answer(self):
        """The caller's next array (None: not answered yet); raises when none will come."""
        if self.next_out in self.results:
            arr = self.results.pop(self.next_out)
            self.next_out += 1
            return arr
        if self.error is not None:
            raise self.error
        if self._finished():
            raise StopIteration
        if self.alive == 0:
            raise self.last_error or RuntimeError("every EmbedStream ended with batches unanswered")
        return None


class StreamPool(_PoolState):
    """Several EmbedStreams at once, one queue of batches: the parallel path of `embed_stream`.

    Each worker thread holds a stream to one replica (workers are dealt to the replicas in turn,
    each replica with a channel of its own, so the streams do not all land on the one a shared
    channel happened to connect first). Workers take the next batch from the one queue as their
    stream has room (`window` in flight each): a fast replica takes more. When a stream ends
    with a retryable status, its unanswered batches go back to the queue, lowest first, for any
    worker; the worker tries its replica again with backoff, and gives up after `retries` tries
    in a row without an answer. Answers are put back in order and yielded once each; at most
    `streams × window × 4` batches are taken ahead of the one the caller waits for.
    """

    def __init__(self, client: "Client", streams: int, window: int):
        super().__init__(client, streams, window)
        self.cond = threading.Condition()

    # ---- the queue ----------------------------------------------------------------------
    def _take(self, source, done: threading.Event) -> tuple[int, list[str]] | None:
        """The next batch for a stream: a requeued one first, else the source's next; None when
        there is none now (the stream then half-closes) or the stream is being given up."""
        with self.cond:
            while True:
                if done.is_set() or self.error is not None:
                    return None
                if self.requeued:
                    return heapq.heappop(self.requeued)
                if self.exhausted:
                    return None
                if self._ahead():
                    break
                self.cond.wait(0.1)  # the caller is behind: do not read further ahead
        item = next(source, None)  # the caller's iterator, outside the lock (it may block)
        with self.cond:
            if item is None:
                self.exhausted = True
                self.cond.notify_all()
                return None
            self.taken = max(self.taken, item[0] + 1)
            if done.is_set():
                heapq.heappush(self.requeued, item)
                self.cond.notify_all()
                return None
            return item

    # ---- a worker -------------------------------------------------------------------------
    def _work(self, k: int, source, pulling: threading.Lock, options: dict) -> None:
        address = self.addresses[k % len(self.addresses)]
        channel, own = self.client.replica_channel(address)
        stub = pb_grpc.EmbedderStub(channel)
        failures, client = 0, self.client
        try:
            while True:
                with self.cond:
                    while not self.requeued and self.exhausted and not self._finished() and self.error is None:
                        self.cond.wait(0.1)  # others' batches may come back to the queue
                    if self._finished() or self.error is not None:
                        return
                slots, done = threading.Semaphore(self.window), threading.Event()
                mine: collections.deque[tuple[int, list[str]]] = collections.deque()

                def requests(slots=slots, done=done, mine=mine):
                    while True:
                        while not slots.acquire(timeout=0.1):
                            if done.is_set():
                                return
                        with pulling:
                            item = self._take(source, done)
                        if item is None:
                            return
                        mine.append(item)
                        yield _stream_request(item[1], item[0], options)

                call = stub.EmbedStream(requests(), metadata=client.metadata)
                try:
                    for resp in call:
                        slots.release()
                        i = _answered_in_order(mine, resp.request_id)
                        failures = 0
                        with self.cond:
                            self._answered(i, resp, address, options)
                            self.cond.notify_all()
                    continue  # half-closed with everything answered: look for more
                except grpc.RpcError as e:
                    failures += 1
                    delay = self._stream_failed(e, failures)
                finally:
                    with self.cond:
                        done.set()
                        self._give_back(mine)
                        self.cond.notify_all()
                    call.cancel()
                time.sleep(delay)
                try:  # this replica, back: within a few seconds, or the next failure counts
                    grpc.channel_ready_future(channel).result(timeout=min(5.0, client.timeout or 5.0))
                except grpc.FutureTimeoutError:
                    pass
        except BaseException as e:  # this worker is done for; the others carry on without it
            with self.cond:
                self._stream_gave_up(e)
        finally:
            with self.cond:
                self.alive -= 1
                self.cond.notify_all()
            if own:
                channel.close()

    # ---- the caller's side --------------------------------------------------------------
    def run(self, texts: Iterable[str], batch_size: int, options: dict) -> Iterator[np.ndarray]:
        source = enumerate(_chunks(texts, batch_size))
        pulling = threading.Lock()
        threads = [threading.Thread(target=self._work, args=(k, source, pulling, options), daemon=True,
                                    name=f"ember-stream-{k}") for k in range(self.streams)]
        self.alive = len(threads)
        for t in threads:
            t.start()
        try:
            while True:
                with self.cond:
                    try:
                        while (arr := self._next_answer()) is None:
                            self.cond.wait(0.1)
                    except StopIteration:
                        return
                    self.cond.notify_all()
                yield arr
        finally:
            with self.cond:
                if self.error is None:
                    self.error = GeneratorExit()  # stop the workers if the caller stopped early
                self.cond.notify_all()
            for t in threads:
                t.join(10)


async def _achunks(texts: Iterable[str] | AsyncIterable[str], size: int) -> AsyncIterator[tuple[int, list[str]]]:
    """(number, batch) of `size` texts from a plain or an async iterable."""
    if isinstance(texts, AsyncIterable):
        chunk, i = [], 0
        async for t in texts:
            chunk.append(t)
            if len(chunk) == size:
                yield i, chunk
                chunk, i = [], i + 1
        if chunk:
            yield i, chunk
    else:
        for item in enumerate(_chunks(texts, size)):
            yield item


class AsyncStreamPool(_PoolState):
    """StreamPool for asyncio: several EmbedStreams at once on one event loop, fed from one queue of
    batches, each stream on a replica of its own (dealt in turn), `window` messages in flight each.
    A stream that ends with a retryable status puts its unanswered batches back in the queue, lowest
    first, for any stream, and tries its replica again with backoff (`retries` tries in a row without
    an answer, and it gives up; the others carry on). Answers come out in order, each once; at most
    `streams × window × 4` batches are read ahead of the one the caller waits for."""

    def __init__(self, client: "AsyncClient", streams: int, window: int):
        super().__init__(client, streams, window)
        self.cond = asyncio.Condition()

    async def _take(self, source, done: asyncio.Event):
        """The next batch for a stream (a requeued one first), or None: none now, or the stream is done."""
        async with self.cond:
            await self.cond.wait_for(lambda: done.is_set() or self.error is not None or bool(self.requeued)
                                     or self.exhausted or self._ahead())
            if done.is_set() or self.error is not None:
                return None
            if self.requeued:
                return heapq.heappop(self.requeued)
            if self.exhausted:
                return None
        item = await anext(source, None)  # the caller's iterable (one reader at a time: `pulling`)
        async with self.cond:
            if item is None:
                self.exhausted = True
            else:
                self.taken = max(self.taken, item[0] + 1)
                if done.is_set():
                    heapq.heappush(self.requeued, item)
                    item = None
            self.cond.notify_all()
            return item

    async def _work(self, k: int, source, pulling: asyncio.Lock, options: dict) -> None:
        address = self.addresses[k % len(self.addresses)]
        channel, own = self.client.replica_channel(address)
        stub = pb_grpc.EmbedderStub(channel)
        client, failures = self.client, 0
        try:
            while True:
                async with self.cond:
                    await self.cond.wait_for(lambda: bool(self.requeued) or not self.exhausted or self._finished()
                                             or self.error is not None)
                    if self._finished() or self.error is not None:
                        return
                slots, done = asyncio.Semaphore(self.window), asyncio.Event()
                mine: collections.deque[tuple[int, list[str]]] = collections.deque()

                async def requests(slots=slots, done=done, mine=mine):
                    while True:
                        await slots.acquire()
                        async with pulling:
                            item = await self._take(source, done)
                        if item is None:
                            return
                        mine.append(item)
                        yield _stream_request(item[1], item[0], options)

                call = stub.EmbedStream(requests(), metadata=client.metadata)
                try:
                    async for resp in call:
                        slots.release()
                        i = _answered_in_order(mine, resp.request_id)
                        failures = 0
                        async with self.cond:
                            self._answered(i, resp, address, options)
                            self.cond.notify_all()
                    continue  # half-closed with everything answered: look for more
                except grpc.RpcError as e:
                    failures += 1
                    delay = self._stream_failed(e, failures)
                finally:
                    call.cancel()
                    async with self.cond:
                        done.set()
                        self._give_back(mine)
                        self.cond.notify_all()
                await asyncio.sleep(delay)
                try:  # this replica, back: within a few seconds, or the next failure counts
                    await asyncio.wait_for(channel.channel_ready(), min(5.0, client.timeout or 5.0))
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # this stream is done for; the others carry on without it
            async with self.cond:
                self._stream_gave_up(e)
        finally:
            async with self.cond:
                self.alive -= 1
                self.cond.notify_all()
            if own:
                await channel.close()

    async def run(self, source, options: dict) -> AsyncIterator[np.ndarray]:
        pulling = asyncio.Lock()
        tasks = [asyncio.create_task(self._work(k, source, pulling, options), name=f"ember-stream-{k}")
                 for k in range(self.streams)]
        self.alive = len(tasks)
        try:
            while True:
                async with self.cond:
                    try:
                        while (arr := self._next_answer()) is None:
                            await self.cond.wait()
                    except StopIteration:
                        return
                    self.cond.notify_all()
                yield arr
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class RerankHit:
    index: int
    score: float
    document: str | None = None


@dataclass(frozen=True)
class TokenCount:
    """One input as the model tokenizes it (its prompt included): the token count, whether it was
    cut to the model's max_tokens, and the ids when asked for."""

    tokens: int
    truncated: bool
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelFacts:
    name: str
    task: str
    dimensions: int
    max_tokens: int
    providers: tuple[str, ...]
    prompts: dict[str, str]
    matryoshka_dimensions: tuple[int, ...]
    is_default_embed: bool
    is_default_rerank: bool
    ready: bool
    max_batch_tokens: int = 0  # padded tokens one batch holds, as the server's memory plan left it
    lanes: int = 0  # inference workers on lanes, side by side (0: the main session only)
    outputs: tuple[str, ...] = ()  # what encode() can ask of an embedding model: dense, sparse, multi_vector
    encodings: tuple[str, ...] = ()  # the dense encodings it answers without int8_ranges (ENCODINGS' names)


def _embed_request(texts: Sequence[str], model: str, input_type: str | None, prompt_name: str,
                   normalize: bool | None, dimensions: int, truncate: bool | None, truncation_direction: str,
                   priority: str, request_id: str, encoding: str = "float32", int8_ranges=None,
                   outputs: Sequence[str] = (), sparse: dict | None = None) -> pb.EmbedRequest:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    req = pb.EmbedRequest(model=model, inputs=list(texts), input_type=_INPUT_TYPE[input_type],
                          prompt_name=prompt_name, dimensions=dimensions,
                          truncation_direction=_DIRECTION[truncation_direction], priority=_PRIORITY[priority],
                          encoding=ENCODINGS[encoding][0], request_id=request_id,
                          outputs=[_OUTPUTS[o] for o in outputs])
    if normalize is not None:
        req.normalize = normalize
    if truncate is not None:
        req.truncate = truncate
    if int8_ranges is not None:
        lo, hi = int8_ranges
        req.int8_ranges.min.extend(np.asarray(lo, dtype=np.float32).tolist())
        req.int8_ranges.max.extend(np.asarray(hi, dtype=np.float32).tolist())
    if sparse:
        req.sparse.CopyFrom(pb.SparseOptions(**sparse))
    return req


def _rerank_request(query: str, documents: Sequence[str], model: str, top_n: int, return_documents: bool,
                    raw_scores: bool, truncate: bool | None, priority: str, request_id: str,
                    instruction: str = "") -> pb.RerankRequest:
    req = pb.RerankRequest(model=model, query=query, documents=list(documents), top_n=top_n,
                           return_documents=return_documents, raw_scores=raw_scores, priority=_PRIORITY[priority],
                           request_id=request_id, instruction=instruction)
    if truncate is not None:
        req.truncate = truncate
    return req


def _stream_request(chunk: list[str], i: int, options: dict) -> pb.EmbedRequest:
    """One EmbedStream message; streams default to BULK priority, request_id = chunk number."""
    return _embed_request(chunk, options.get("model", ""), options.get("input_type"),
                          options.get("prompt_name", ""), options.get("normalize"), options.get("dimensions", 0),
                          options.get("truncate"), options.get("truncation_direction", "right"),
                          options.get("priority", "bulk"), str(i), options.get("encoding", "float32"),
                          options.get("int8_ranges"))


def embeddings_array(resp: pb.EmbedResponse, encoding: str = "float32") -> np.ndarray:
    """An EmbedResponse's dense vectors as an [n, …] array: float32 [n, dimensions] for FLOAT and
    FLOAT32_BYTES, else the rows of `encoding` (the one asked for) as ENCODINGS types them."""
    dtype = np.dtype(ENCODINGS[encoding][1])
    if not resp.embeddings:
        return np.zeros((0, resp.dimensions), dtype=dtype)
    kind = resp.embeddings[0].WhichOneof("data")
    if kind is None:
        raise ValueError(f"model {resp.model} returned no dense vectors (a sparse-only model such as SPLADE): "
                         "ask for its outputs with encode(texts, dense=False, sparse=True)")
    if kind == "values":
        return np.array([e.values.values for e in resp.embeddings], dtype=np.float32)
    buf = b"".join(e.packed for e in resp.embeddings)
    return np.frombuffer(buf, dtype=dtype).reshape(len(resp.embeddings), -1).copy()


class SparseEmbeddings:
    """Sparse vectors of a batch: for row i, `indices[i]` (vocabulary ids, ascending, uint32),
    `values[i]` (float32 weights) and, where asked for, `tokens[i]` (their texts). `dimensions`
    is the vocabulary size. `to_scipy()` gives a scipy.sparse CSR array (where scipy is installed)."""

    def __init__(self, indices: list, values: list, tokens: list | None, dimensions: int):
        self.indices, self.values, self.tokens, self.dimensions = indices, values, tokens, dimensions

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        """Row i as {token id (or token text, where returned): weight}."""
        keys = self.tokens[i] if self.tokens else self.indices[i].tolist()
        return dict(zip(keys, self.values[i].tolist(), strict=True))

    def to_scipy(self):
        from scipy.sparse import csr_array

        lengths = [len(i) for i in self.indices]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return csr_array((cat(self.values, np.float32), cat(self.indices, np.int64), indptr),
                         shape=(len(self.indices), self.dimensions))


@dataclass
class Encoded:
    """What `Client.encode` returns: each output asked for, else None. dense: an array as
    `embed` returns it; sparse: SparseEmbeddings; multi_vector: one [tokens - 1, D] array per text."""

    dense: np.ndarray | None
    sparse: SparseEmbeddings | None
    multi_vector: list[np.ndarray] | None


def _encode_request(texts, dense, sparse, multi_vector, model, input_type, prompt_name, dimensions, truncate,
                    priority, encoding, top_k, min_weight, return_tokens, request_id):
    """encode()'s outputs and its EmbedRequest."""
    outputs = [o for o, on in (("dense", dense), ("sparse", sparse), ("multi_vector", multi_vector)) if on]
    options = {"top_k": top_k, "min_weight": min_weight, "return_tokens": return_tokens}
    return outputs, _embed_request(texts, model, input_type, prompt_name, None, dimensions, truncate, "right", priority,
                                   request_id, encoding, None, outputs, options if sparse else None)


def encoded(resp: pb.EmbedResponse, outputs: Sequence[str], encoding: str) -> Encoded:
    dense = embeddings_array(resp, encoding) if "dense" in outputs else None
    sparse = multi = None
    if "sparse" in outputs:
        vs = [e.sparse for e in resp.embeddings]
        sparse = SparseEmbeddings([np.array(v.indices, dtype=np.uint32) for v in vs],
                                  [np.array(v.values, dtype=np.float32) for v in vs],
                                  [list(v.tokens) for v in vs] if any(v.tokens for v in vs) else None,
                                  resp.sparse_dimensions)
    if "multi_vector" in outputs:
        dtype = np.dtype(ENCODINGS[encoding][1])
        multi = [np.frombuffer(e.multi_vector.packed, dtype=dtype).reshape(e.multi_vector.rows, -1).copy()
                 for e in resp.embeddings]
    return Encoded(dense, sparse, multi)


def _tokenize_request(texts: Sequence[str], model: str, input_type: str | None, prompt_name: str,
                      truncate: bool | None, truncation_direction: str, return_ids: bool) -> pb.TokenizeRequest:
    req = pb.TokenizeRequest(model=model, inputs=list(texts), input_type=_INPUT_TYPE[input_type],
                             prompt_name=prompt_name, truncation_direction=_DIRECTION[truncation_direction],
                             return_ids=return_ids)
    if truncate is not None:
        req.truncate = truncate
    return req


def _counts(resp: pb.TokenizeResponse) -> list[TokenCount]:
    return [TokenCount(t.tokens, t.truncated, tuple(t.ids)) for t in resp.inputs]


def _hits(resp: pb.RerankResponse) -> list[RerankHit]:
    return [RerankHit(r.index, r.score, r.document if r.HasField("document") else None) for r in resp.results]


def _facts(resp: pb.ListModelsResponse) -> list[ModelFacts]:
    return [ModelFacts(m.name, pb.ModelTask.Name(m.task).removeprefix("MODEL_TASK_").lower(), m.dimensions,
                       m.max_tokens, tuple(m.providers), dict(m.prompts), tuple(m.matryoshka_dimensions),
                       m.is_default_embed, m.is_default_rerank, m.ready, m.max_batch_tokens, m.lanes,
                       tuple(pb.EmbedOutput.Name(o).removeprefix("EMBED_OUTPUT_").lower() for o in m.outputs),
                       tuple(dict.fromkeys(_ENCODING_NAMES[e] for e in m.encodings if e in _ENCODING_NAMES)))
            for m in resp.models]


_ENCODING_NAMES = {pb.ENCODING_FLOAT: "float32", **{v[0]: k for k, v in ENCODINGS.items()}}


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _connect(client, module, target, channel, credentials, options):
    """The channel a client (sync: module grpc; asyncio: grpc.aio) calls through: the caller's, or one
    of its own to `target`; keeps what its replicas' channels are made with (`_replica_channel`)."""
    client.target = target
    client.credentials, client.options = credentials, [*_OPTIONS, *options]
    client.own_channel = channel is None
    return channel if channel is not None else _channel(module, channel_target(target), credentials, client.options)


def _replica_channel(client, module, address: str):
    """A channel to one replica for a pool of streams, and whether the caller is to close it: one of
    its own with the client's credentials and options (TLS checks the target's host name, not the
    replica's address), or the client's channel where the caller made that one."""
    if not client.own_channel:
        return client.channel, False
    options = client.options
    host = _authority_host(client.target)
    if client.credentials is not None and host and \
            not any(k == "grpc.ssl_target_name_override" for k, _ in options):
        options = [*options, ("grpc.ssl_target_name_override", host)]
    return _channel(module, address, client.credentials, options), True


def _attach(client, channel, api_key: str | None, timeout: float | None, retries: int = 4,
            backoff: float = 0.05) -> None:
    """The channel, call options and stubs that Client and AsyncClient share."""
    client.channel = channel
    client.timeout = timeout
    client.retries, client.backoff = retries, backoff
    client.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    client._embedder = pb_grpc.EmbedderStub(channel)
    client._reranker = pb_grpc.RerankerStub(channel)
    client._models = pb_grpc.ModelsStub(channel)
    client._health_check = channel.unary_unary(_wire.HEALTH_CHECK, request_serializer=_wire.health_request,
                                               response_deserializer=_wire.health_status)
    client.stream_resumes = 0  # streams of embed_stream that ended retryably and were resumed on a new one


class Client:
    """Blocking client.

    `target`: "host:port", "dns:///name:port" (every address of the name), or a list of "ip:port"
    replicas; calls are spread round-robin over the ones that answer. Embed and Rerank retry
    UNAVAILABLE, RESOURCE_EXHAUSTED (after the server's retry hint) and CANCELLED up to `retries`
    times with backoff, within `timeout` seconds in all. `embed` of more than `chunk_size` texts
    goes over one EmbedStream in chunks.
    """

    def __init__(self, target: str | Sequence[str] = "localhost:50051", *, channel: grpc.Channel | None = None,
                 api_key: str | None = None, timeout: float | None = 60.0, retries: int = 4, backoff: float = 0.05,
                 chunk_size: int = 256, credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, object]] = ()):
        """credentials: TLS (grpc.ssl_channel_credentials(...)) for the channel this client makes and for
        each replica's channel of `embed_stream(streams=N)`; options: more channel options (e.g.
        ("grpc.ssl_target_name_override", "ember.example")). A `channel` made by the caller is used as it
        is, and then the streams of `embed_stream(streams=N)` share it."""
        _attach(self, _connect(self, grpc, target, channel, credentials, options), api_key, timeout, retries, backoff)
        self.chunk_size = chunk_size

    def replica_channel(self, address: str) -> tuple[grpc.Channel, bool]:
        """A channel to one replica for StreamPool, and whether the caller is to close it (see
        `_replica_channel`)."""
        return _replica_channel(self, grpc, address)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def embed(self, texts: Sequence[str], *, model: str = "", input_type: str | None = None, prompt_name: str = "",
              normalize: bool | None = None, dimensions: int = 0, truncate: bool | None = None,
              truncation_direction: str = "right", priority: str = "realtime", request_id: str = "",
              encoding: str = "float32", int8_ranges=None) -> np.ndarray:
        """Embed texts; returns [len(texts), dimensions] float32, or the rows of `encoding` (ENCODINGS:
        float16, bfloat16, int8, uint8, binary, ubinary; int8/uint8 in the model's calibrated ranges or
        `int8_ranges` = (mins, maxes)). Many texts are chunked over a stream."""
        if len(texts) > self.chunk_size:
            parts = list(self.embed_stream(texts, batch_size=self.chunk_size, model=model, input_type=input_type,
                                           prompt_name=prompt_name, normalize=normalize, dimensions=dimensions,
                                           truncate=truncate, truncation_direction=truncation_direction,
                                           priority=priority, encoding=encoding, int8_ranges=int8_ranges))
            return np.concatenate(parts)
        req = _embed_request(texts, model, input_type, prompt_name, normalize, dimensions, truncate,
                             truncation_direction, priority, request_id, encoding, int8_ranges)
        return embeddings_array(_call_with_retries(self, self._embedder.Embed, req), encoding)

    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False, multi_vector: bool = False,
               model: str = "", input_type: str | None = None, prompt_name: str = "", dimensions: int = 0,
               truncate: bool | None = None, priority: str = "realtime", encoding: str = "float32",
               sparse_top_k: int = 0, sparse_min_weight: float = 0.0, return_tokens: bool = False,
               request_id: str = "") -> Encoded:
        """Any of a model's outputs for texts, from one run: the dense vectors, the sparse weights
        (SPLADE, BGE-M3's lexical weights) and the multi-vectors (BGE-M3's ColBERT vectors)."""
        outputs, req = _encode_request(texts, dense, sparse, multi_vector, model, input_type, prompt_name, dimensions,
                                       truncate, priority, encoding, sparse_top_k, sparse_min_weight, return_tokens,
                                       request_id)
        return encoded(_call_with_retries(self, self._embedder.Embed, req), outputs, encoding)

    def embed_stream(self, texts: Iterable[str], *, batch_size: int = 64, window: int = 32, streams: int = 1,
                     **options) -> Iterator[np.ndarray]:
        """Feed an iterable of any size through EmbedStream; yields one array per batch, in order.

        With `streams` > 1, that many streams run at once, spread over the replicas the target
        names (`replicas()`: a list, or every address of a `dns:///` name), all fed batch by batch
        from the one iterable; a replica that goes away has its unanswered batches sent on the
        others. The batches still come out in order, each once (`StreamPool`).
        """
        if streams > 1:
            return StreamPool(self, streams, window).run(texts, batch_size, options)
        return self._one_stream(texts, batch_size, window, options)

    def _one_stream(self, texts: Iterable[str], batch_size: int, window: int, options: dict) -> Iterator[np.ndarray]:
        """One EmbedStream (see embed_stream).

        At most `window` messages are sent ahead of the answers: grpc's sync client would otherwise
        drain `texts` into its own buffers as fast as it can read them. When the stream ends with a
        retryable status (UNAVAILABLE: a replica drained or went away; RESOURCE_EXHAUSTED after the
        server's retry hint), the messages not yet answered are sent again on a new stream (another
        replica, or this one once it is back), then the rest: every batch is yielded exactly once,
        in order. `retries` attempts in a row without an answer, and the stream gives up.
        """
        pending = _Resend(enumerate(_chunks(texts, batch_size)))
        failures = 0
        while True:
            slots = threading.Semaphore(window)
            done = threading.Event()

            def requests(resend, slots, done):
                for item in resend:
                    while not slots.acquire(timeout=0.1):
                        if done.is_set():
                            return
                    yield _stream_request(item[1], item[0], options)
                while True:
                    while not slots.acquire(timeout=0.1):
                        if done.is_set():
                            return
                    item = pending.take(done)
                    if item is None:
                        return
                    yield _stream_request(item[1], item[0], options)

            call = self._embedder.EmbedStream(requests(pending.start(), slots, done), metadata=self.metadata)
            try:
                for resp in call:
                    slots.release()
                    pending.answered(resp.request_id)
                    failures = 0
                    yield embeddings_array(resp, options.get("encoding", "float32"))
                if pending.finished():
                    return
                raise RuntimeError("EmbedStream ended with messages unanswered")
            except grpc.RpcError as e:
                delay, last = _resume_delay(self, e, failures), e
                failures += 1
            finally:
                with pending.lock:
                    done.set()
                call.cancel()
            time.sleep(delay)
            try:  # a replica that answers: another one, or this one once it is back (within `timeout`)
                grpc.channel_ready_future(self.channel).result(timeout=self.timeout)
            except grpc.FutureTimeoutError:
                raise last from None

    def rerank(self, query: str, documents: Sequence[str], *, model: str = "", top_n: int = 0,
               return_documents: bool = False, raw_scores: bool = False, truncate: bool | None = None,
               priority: str = "realtime", request_id: str = "", instruction: str = "") -> list[RerankHit]:
        """Score documents against query; best first. `instruction` replaces an instruction-following
        reranker's default task (Qwen3-Reranker)."""
        req = _rerank_request(query, documents, model, top_n, return_documents, raw_scores, truncate, priority,
                              request_id, instruction)
        return _hits(_call_with_retries(self, self._reranker.Rerank, req))

    def tokenize(self, texts: Sequence[str], *, model: str = "", input_type: str | None = None,
                 prompt_name: str = "", truncate: bool | None = None, truncation_direction: str = "right",
                 return_ids: bool = False) -> list[TokenCount]:
        """How the model tokenizes texts (with the prompt `embed` would add): counts, truncation, ids."""
        req = _tokenize_request(texts, model, input_type, prompt_name, truncate, truncation_direction, return_ids)
        return _counts(_call_with_retries(self, self._models.Tokenize, req))

    def list_models(self) -> list[ModelFacts]:
        return _facts(self._models.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata))

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN for a service ("" = the server, model/<name>)."""
        return self._health_check(service, timeout=self.timeout)

    def wait_until_serving(self, service: str = "", timeout: float = 120.0, poll: float = 0.1) -> None:
        """Block until `service` reports SERVING (TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(service)
                if last == "SERVING":
                    return
            except grpc.RpcError as e:
                last = e.code().name
            time.sleep(poll)
        raise TimeoutError(f"{service or 'server'} not SERVING after {timeout}s (last: {last})")


class AsyncClient:
    """asyncio client with the same methods as `Client`, awaitable."""

    def __init__(self, target: str | Sequence[str] = "localhost:50051", *, channel: grpc.aio.Channel | None = None,
                 api_key: str | None = None, timeout: float | None = 60.0, retries: int = 4, backoff: float = 0.05,
                 credentials: grpc.ChannelCredentials | None = None, options: Sequence[tuple[str, object]] = ()):
        _attach(self, _connect(self, grpc.aio, target, channel, credentials, options), api_key, timeout, retries,
                backoff)

    def replica_channel(self, address: str) -> tuple[grpc.aio.Channel, bool]:
        """As `Client.replica_channel`, an asyncio channel."""
        return _replica_channel(self, grpc.aio, address)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def embed(self, texts: Sequence[str], *, model: str = "", input_type: str | None = None,
                    prompt_name: str = "", normalize: bool | None = None, dimensions: int = 0,
                    truncate: bool | None = None, truncation_direction: str = "right", priority: str = "realtime",
                    request_id: str = "", encoding: str = "float32", int8_ranges=None) -> np.ndarray:
        req = _embed_request(texts, model, input_type, prompt_name, normalize, dimensions, truncate,
                             truncation_direction, priority, request_id, encoding, int8_ranges)
        return embeddings_array(await _acall_with_retries(self, self._embedder.Embed, req), encoding)

    async def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False,
                     multi_vector: bool = False, model: str = "", input_type: str | None = None, prompt_name: str = "",
                     dimensions: int = 0, truncate: bool | None = None, priority: str = "realtime",
                     encoding: str = "float32", sparse_top_k: int = 0, sparse_min_weight: float = 0.0,
                     return_tokens: bool = False, request_id: str = "") -> Encoded:
        """As `Client.encode`."""
        outputs, req = _encode_request(texts, dense, sparse, multi_vector, model, input_type, prompt_name, dimensions,
                                       truncate, priority, encoding, sparse_top_k, sparse_min_weight, return_tokens,
                                       request_id)
        return encoded(await _acall_with_retries(self, self._embedder.Embed, req), outputs, encoding)

    async def embed_stream(self, texts: Iterable[str] | AsyncIterable[str], *, batch_size: int = 64,
                           window: int = 32, streams: int = 1, **options) -> AsyncIterator[np.ndarray]:
        """As `Client.embed_stream`: one array per batch, in order, the unanswered messages sent again
        on a new stream after UNAVAILABLE or RESOURCE_EXHAUSTED; with `streams` > 1, that many
        streams at once over the target's replicas (`AsyncStreamPool`), `window` messages ahead each."""
        source = _achunks(texts, batch_size)
        if streams > 1:
            async for arr in AsyncStreamPool(self, streams, window).run(source, options):
                yield arr
            return
        sent: collections.deque[tuple[int, list[str]]] = collections.deque()
        state = {"exhausted": False}
        failures = 0
        while True:
            async def requests(resend):
                for i, chunk in resend:
                    yield _stream_request(chunk, i, options)
                async for item in source:
                    sent.append(item)
                    yield _stream_request(item[1], item[0], options)
                state["exhausted"] = True

            call = self._embedder.EmbedStream(requests(list(sent)), metadata=self.metadata)
            try:
                async for resp in call:
                    _answered_in_order(sent, resp.request_id)
                    failures = 0
                    yield embeddings_array(resp, options.get("encoding", "float32"))
                if state["exhausted"] and not sent:
                    return
                raise RuntimeError("EmbedStream ended with messages unanswered")
            except grpc.RpcError as e:
                delay, last = _resume_delay(self, e, failures), e
                failures += 1
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(self.channel.channel_ready(), self.timeout)
            except asyncio.TimeoutError:
                raise last from None

    async def rerank(self, query: str, documents: Sequence[str], *, model: str = "", top_n: int = 0,
                     return_documents: bool = False, raw_scores: bool = False, truncate: bool | None = None,
                     priority: str = "realtime", request_id: str = "", instruction: str = "") -> list[RerankHit]:
        req = _rerank_request(query, documents, model, top_n, return_documents, raw_scores, truncate, priority,
                              request_id, instruction)
        return _hits(await _acall_with_retries(self, self._reranker.Rerank, req))

    async def tokenize(self, texts: Sequence[str], *, model: str = "", input_type: str | None = None,
                       prompt_name: str = "", truncate: bool | None = None, truncation_direction: str = "right",
                       return_ids: bool = False) -> list[TokenCount]:
        req = _tokenize_request(texts, model, input_type, prompt_name, truncate, truncation_direction, return_ids)
        return _counts(await _acall_with_retries(self, self._models.Tokenize, req))

    async def list_models(self) -> list[ModelFacts]:
        return _facts(await self._models.ListModels(pb.ListModelsRequest(), timeout=self.timeout,
                                                    metadata=self.metadata))

    async def health(self, service: str = "") -> str:
        return await self._health_check(service, timeout=self.timeout)

    async def wait_until_serving(self, service: str = "", timeout: float = 120.0, poll: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = await self.health(service)
                if last == "SERVING":
                    return
            except grpc.RpcError as e:
                last = e.code().name
            await asyncio.sleep(poll)
        raise TimeoutError(f"{service or 'server'} not SERVING after {timeout}s (last: {last})")
