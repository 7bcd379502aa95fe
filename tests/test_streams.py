"""Bidirectional streams driven the way interactive clients and self-pacing pipelines drive them:
one message, wait for its answer, then the next, with the stream left open all along.
"""
from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import pytest

from ember.v1 import ember_pb2 as pb
from ember_client import Client

ROUNDS = 20
ROUND_TIMEOUT = 10.0  # an answer that waits for the next message never comes: the round fails


class Interactive:
    """A grpcio stream whose requests come from a queue the test fills one at a time."""

    def __init__(self, method):
        self.outbox: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        self.call = method(iter(self.outbox.get, None), timeout=120)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.answers.put(resp)
            self.answers.put("end")
        except grpc.RpcError as e:
            self.answers.put(e)

    def round_trip(self, req):
        self.outbox.put(req)
        try:
            return self.answers.get(timeout=ROUND_TIMEOUT)
        except queue.Empty:
            pytest.fail(f"message {req.request_id!r} was not answered within {ROUND_TIMEOUT}s while the stream "
                        "stayed open")

    def close(self):
        self.outbox.put(None)  # half-close
        return self.answers.get(timeout=ROUND_TIMEOUT)


def test_embed_stream_answers_each_message_before_the_next_is_sent(tiny_server):
    s = Interactive(tiny_server.embedder.EmbedStream)
    for r in range(ROUNDS):
        resp = s.round_trip(pb.EmbedRequest(inputs=[f"round {r}", "second text"], request_id=f"e{r}"))
        assert isinstance(resp, pb.EmbedResponse), resp
        assert resp.request_id == f"e{r}" and len(resp.embeddings) == 2
    assert s.close() == "end"


def test_rerank_stream_answers_each_message_before_the_next_is_sent(tiny_server):
    s = Interactive(tiny_server.reranker.RerankStream)
    for r in range(ROUNDS):
        resp = s.round_trip(pb.RerankRequest(query=f"query {r}", documents=["a", "b", "c"], request_id=f"r{r}"))
        assert isinstance(resp, pb.RerankResponse), resp
        assert resp.request_id == f"r{r}" and len(resp.results) == 3
    assert s.close() == "end"


def test_a_bad_message_in_an_interactive_stream_ends_it_with_its_request_id(tiny_server):
    s = Interactive(tiny_server.embedder.EmbedStream)
    assert s.round_trip(pb.EmbedRequest(inputs=["fine"], request_id="a")).request_id == "a"
    err = s.round_trip(pb.EmbedRequest(inputs=[""], request_id="b"))
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id=b" in err.details() and "inputs[0]" in err.details()


def test_the_python_client_stream_paced_by_its_answers(tiny_server):
    """A pipeline that produces the next batch only after the last one came back (as a consumer
    that writes each result before it reads on): the client's embed_stream must keep flowing."""
    answered = threading.Semaphore(0)
    batch = 8

    def texts():
        for r in range(ROUNDS):
            if r and not answered.acquire(timeout=ROUND_TIMEOUT):
                raise AssertionError(f"batch {r - 1} was not answered within {ROUND_TIMEOUT}s")
            yield from (f"paced {r} {k}" for k in range(batch))

    with Client(tiny_server.address) as c:
        got = []
        for arr in c.embed_stream(texts(), batch_size=batch):
            got.append(arr)
            answered.release()
        expected = [c.embed([f"paced {r} {k}" for k in range(batch)]) for r in range(ROUNDS)]
    assert len(got) == ROUNDS
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), atol=1e-6)
