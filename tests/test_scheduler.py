"""The scheduler's behaviour (not its timings): budgets, priorities, dropping dead work, bounds.

The engine is the real tiny model's, wrapped so a test can hold a batch and record every batch.
"""
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ember.engine import Engine
from ember.errors import DeadlineExceeded, ResourceExhausted
from ember.manifest import read_manifest
from ember.scheduler import BULK, BULK_NICE, REALTIME, ModelScheduler
from ember.servicers import stream
from ember.tokenization import ModelTokenizer
from ember.v1 import ember_pb2 as pb


class RecordingEngine:
    """The real engine; records each batch's padded shape and item lengths, and can hold a batch."""

    def __init__(self, engine: Engine, hold_threads: str = ""):
        self.real = engine
        self.manifest = engine.manifest
        self.needs_type_ids = engine.needs_type_ids
        self.batches: list[tuple[int, int, list[int]]] = []
        self.threads: list[str] = []  # the thread that ran each batch
        self.nices: list[int] = []  # that thread's OS nice value
        self.hold = threading.Event()
        self.hold.set()
        self.hold_threads = hold_threads  # only threads whose names start with this are held
        self.entered = threading.Event()
        self.held_rows = 0  # rows of the batches waiting on `hold` now
        self._lock = threading.Lock()

    def infer(self, ids, mask, type_ids):
        if threading.current_thread().name.startswith(self.hold_threads):
            with self._lock:
                self.held_rows += ids.shape[0]
            self.entered.set()
            self.hold.wait(30)
            with self._lock:
                self.held_rows -= ids.shape[0]
        self.batches.append((ids.shape[0], ids.shape[1], mask.sum(axis=1).tolist()))
        self.threads.append(threading.current_thread().name)
        self.nices.append(os.getpriority(os.PRIO_PROCESS, 0))  # Linux: the calling thread's
        return self.real.infer(ids, mask, type_ids)


@pytest.fixture(scope="module")
def parts(tiny_models_dir):
    d = tiny_models_dir / "tiny-embed"
    m = read_manifest(d)
    engine = Engine(d, m, ("cpu",))
    return engine, ModelTokenizer(d, m, with_type_ids=engine.needs_type_ids)


def make(parts, **kw):
    engine, tok = parts
    rec = RecordingEngine(engine)
    opts = dict(max_batch_tokens=64, max_batch_size=8, max_queue_items=1000, pad_left=False, pad_id=0)
    opts.update(kw)
    return ModelScheduler(rec, **opts), rec, tok


def make_with_lanes(parts, hold_threads: str = "", **kw):
    """A scheduler with two workers whose two lanes are already built (each a RecordingEngine)."""
    engine, _ = parts
    lanes = [RecordingEngine(engine, hold_threads=hold_threads) for _ in range(2)]
    sched, main, tok = make(parts, **{"workers": 2, "lanes_planned": True, "max_batch_tokens": 40, **kw})
    sched.add_lanes(lanes)
    return sched, main, lanes, tok


def texts_of_lengths(tok, lengths):
    # "a" is one token: n-2 of them plus [CLS]/[SEP] give exactly n tokens
    out = tok.encode([" ".join(["a"] * (n - 2)) for n in lengths], truncate=True, direction="right")
    assert [t.tokens for t in out] == list(lengths)
    return out


def test_batches_respect_token_budget_and_size(parts):
    async def run():
        sched, rec, tok = make(parts)
        rec.hold.clear()
        first = sched.submit(texts_of_lengths(tok, [5]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        lengths = [3, 30, 7, 12, 40, 9, 3, 25, 16, 60, 4, 11, 8, 6, 33, 5, 19, 3, 3, 3]
        job = sched.submit(texts_of_lengths(tok, lengths), priority=REALTIME, deadline=None)
        rec.hold.set()
        await first.future
        out = await job.future
        sched.stop()
        return rec.batches[1:], out, lengths

    batches, out, lengths = asyncio.run(run())
    assert sorted(n for _, _, ns in batches for n in ns) == sorted(lengths)  # every item exactly once
    for rows, seq, ns in batches:
        assert rows <= 8 and seq == max(ns)
        assert rows * seq <= 64 or rows == 1
    assert out.shape == (20, 32)


def test_results_land_in_input_order(parts):
    async def run():
        sched, rec, tok = make(parts, max_batch_tokens=40)
        lengths = [30, 3, 12, 3, 25, 7]
        toks = texts_of_lengths(tok, lengths)
        out = await sched.submit(toks, priority=REALTIME, deadline=None).future
        singles = [await sched.submit([t], priority=REALTIME, deadline=None).future for t in toks]
        sched.stop()
        return out, np.concatenate(singles)

    out, singles = asyncio.run(run())
    np.testing.assert_allclose(out, singles, rtol=1e-4, atol=1e-5)


def test_realtime_runs_before_bulk(parts):
    async def run():
        sched, rec, tok = make(parts)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=BULK, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        bulk = sched.submit(texts_of_lengths(tok, [10] * 12), priority=BULK, deadline=None)
        realtime = sched.submit(texts_of_lengths(tok, [20] * 3), priority=REALTIME, deadline=None)
        rec.hold.set()
        await asyncio.gather(blocker.future, bulk.future, realtime.future)
        sched.stop()
        return rec.batches

    batches = asyncio.run(run())
    assert batches[0][2] == [4]  # the batch already running
    assert batches[1][2] == [20, 20, 20]  # REALTIME, queued after BULK, runs first
    assert all(set(ns) == {10} for _, _, ns in batches[2:])


def test_bulk_batches_use_the_bulk_budget(parts):
    async def run():
        sched, rec, tok = make(parts, max_batch_tokens=200, bulk_max_batch_tokens=30)
        await sched.submit(texts_of_lengths(tok, [10] * 9), priority=BULK, deadline=None).future
        await sched.submit(texts_of_lengths(tok, [10] * 9), priority=REALTIME, deadline=None).future
        sched.stop()
        return rec.batches

    batches = asyncio.run(run())
    assert [rows for rows, _, _ in batches[:3]] == [3, 3, 3]  # 30 tokens each
    assert batches[3][0] == 8  # REALTIME: up to max_batch_size (80 tokens ≤ 200)


def test_cancelled_and_expired_items_never_reach_inference(parts):
    async def run():
        sched, rec, tok = make(parts)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        cancelled = sched.submit(texts_of_lengths(tok, [11] * 5), priority=REALTIME, deadline=None)
        cancelled.future.cancel()
        with pytest.raises(DeadlineExceeded):  # already late: refused at once
            sched.submit(texts_of_lengths(tok, [12] * 5), priority=REALTIME, deadline=0.0)
        expired = sched.submit(texts_of_lengths(tok, [13] * 5), priority=REALTIME, deadline=time.monotonic() + 0.2)
        live = sched.submit(texts_of_lengths(tok, [17] * 2), priority=REALTIME, deadline=None)
        await asyncio.sleep(0.3)  # `expired`'s deadline passes while it waits
        rec.hold.set()
        await blocker.future
        await live.future
        with pytest.raises(DeadlineExceeded):
            await expired.future
        sched.stop()
        return rec.batches

    batches = asyncio.run(run())
    seen = [n for _, _, ns in batches for n in ns]
    assert 11 not in seen and 12 not in seen and 13 not in seen and seen.count(17) == 2


def test_full_queue_is_refused_at_once_with_a_retry_hint(parts):
    async def run():
        sched, rec, tok = make(parts, max_queue_items=10)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        accepted = sched.submit(texts_of_lengths(tok, [5] * 8), priority=REALTIME, deadline=None)
        with pytest.raises(ResourceExhausted) as e:
            sched.submit(texts_of_lengths(tok, [5] * 3), priority=BULK, deadline=None)
        rec.hold.set()
        out = await accepted.future  # what was accepted is not lost
        await blocker.future
        sched.stop()
        return e.value, out

    err, out = asyncio.run(run())
    assert err.retry_after_s > 0 and "limit 10" in err.message
    assert out.shape == (8, 32)


def test_idle_model_runs_a_small_realtime_job_on_the_callers_thread(parts):
    async def run():
        sched, rec, tok = make(parts, inline_max_tokens=64)
        toks = texts_of_lengths(tok, [9, 4, 7])
        inline = sched.run_inline(toks, priority=REALTIME)
        assert inline is not None and inline.future.done()  # finished before returning: no thread hop
        queued = await sched.submit(toks, priority=REALTIME, deadline=None).future
        sched.stop()
        return inline.future.result(), queued, rec.threads

    inline, queued, threads = asyncio.run(run())
    np.testing.assert_array_equal(inline, queued)  # same batch, same numbers
    assert threads[0] == threading.current_thread().name and threads[1].startswith("ember-infer-")


def test_a_lone_input_runs_unpadded_with_the_numbers_it_gets_in_a_padded_batch(parts):
    async def run():
        sched, rec, tok = make(parts, inline_max_tokens=64)
        inline = sched.run_inline(texts_of_lengths(tok, [6]), priority=REALTIME)  # first: the model is idle
        alone = await sched.submit(texts_of_lengths(tok, [6]), priority=REALTIME, deadline=None).future
        batched = await sched.submit(texts_of_lengths(tok, [6, 12]), priority=REALTIME, deadline=None).future
        sched.stop()
        return alone, inline.future.result(), batched, rec.batches

    alone, inline, batched, batches = asyncio.run(run())
    assert batches == [(1, 6, [6]), (1, 6, [6]), (2, 12, [6, 12])]  # its own 6 tokens, no padding
    np.testing.assert_array_equal(alone, inline)
    np.testing.assert_allclose(alone[0], batched[0], rtol=1e-5, atol=1e-6)


def test_inline_path_is_refused_unless_the_model_is_idle_and_the_job_small_and_realtime(parts):
    async def run():
        sched, rec, tok = make(parts, inline_max_tokens=40)
        small = texts_of_lengths(tok, [8, 8])
        refused = {
            "bulk": sched.run_inline(small, priority=BULK),
            "over the token limit": sched.run_inline(texts_of_lengths(tok, [21, 3]), priority=REALTIME),
        }
        rec.hold.clear()
        running = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        refused["a batch running"] = sched.run_inline(small, priority=REALTIME)
        rec.hold.set()
        await running.future
        # Items queued and no batch running: a lone short item waits (max_wait) to fill a batch.
        # (Checked behind a running batch instead, the worker could finish the queued batch just
        # before the check while its results were still on their way to the loop.)
        filling, _, _ = make(parts, inline_max_tokens=40, max_wait_us=60_000_000)
        waiting = filling.submit(texts_of_lengths(tok, [5]), priority=REALTIME, deadline=None)
        refused["items queued"] = filling.run_inline(small, priority=REALTIME)
        filling.stop()  # a stopping scheduler runs what is queued without waiting
        await waiting.future
        while not sched.idle():  # the worker posts results just before it counts itself done
            await asyncio.sleep(0.001)
        refused["idle for less than min_idle_s"] = sched.run_inline(small, priority=REALTIME, min_idle_s=60)
        accepted = sched.run_inline(small, priority=REALTIME)
        sched.stop()
        refused["stopped"] = sched.run_inline(small, priority=REALTIME)
        return refused, accepted

    refused, accepted = asyncio.run(run())
    assert {k: v for k, v in refused.items() if v is not None} == {}
    assert accepted is not None and accepted.future.result().shape == (2, 32)


def test_stream_stops_reading_at_its_in_flight_bound():
    async def run():
        pulled = 0
        release = asyncio.Event()

        async def requests():
            nonlocal pulled
            for i in range(100):
                pulled += 1
                yield pb.EmbedRequest(request_id=str(i))

        async def one(req, rid):
            await release.wait()
            return rid

        class Ctx:
            def invocation_metadata(self):
                return ()

        out = []
        gen = stream(requests(), Ctx(), 4, "test", lambda r, rid: one(r, rid))

        async def consume():
            async for r in gen:
                out.append(r)

        task = asyncio.ensure_future(consume())
        for _ in range(50):
            await asyncio.sleep(0)
        at_bound = pulled
        release.set()
        await task
        return at_bound, out

    at_bound, out = asyncio.run(run())
    assert at_bound == 4  # four in flight, nothing more read
    assert out == [str(i) for i in range(100)]  # every message answered once, in order


class _Context:
    """The two things Core asks of a grpc ServicerContext."""

    def time_remaining(self):
        return None

    def invocation_metadata(self):
        return ()


class _Expired(_Context):
    def time_remaining(self):
        return 0.0


def test_a_call_whose_deadline_passed_never_runs_on_either_path(tiny_server):
    """The inline path runs nothing that is already late, and neither does the queue."""
    model = tiny_server.server.registry.models["tiny-embed"]
    rec, lanes = RecordingEngine(model.scheduler.engine), model.scheduler.lanes
    model.scheduler.engine, model.scheduler.lanes = rec, [rec] * len(lanes)
    core, prom = tiny_server.server.core, tiny_server.server.metrics.prom

    def dropped() -> float:
        return prom.get_sample_value("ember_deadline_dropped_total", {"model": "tiny-embed"}) or 0.0

    before = dropped()
    try:
        async def late(inputs):
            await asyncio.sleep(0.01)  # the model idle: a lone small call would take the inline path
            return await core.embed(pb.EmbedRequest(inputs=inputs), _Expired(), "r")

        # one text (inline-sized), and 64 of ~12 tokens: more than inline_max_tokens, so queued
        for inputs in (["late"], ["late " * 10] * 64):
            with pytest.raises(DeadlineExceeded):
                tiny_server.call(late(inputs))
        answer = tiny_server.call(core.embed(pb.EmbedRequest(inputs=["on time"]), _Context(), "r"))
    finally:
        model.scheduler.engine, model.scheduler.lanes = rec.real, lanes
    assert len(rec.batches) == 1 and len(answer.embeddings) == 1  # only the call on time ran
    assert dropped() - before == 65  # counted as dropped, item by item


def test_server_takes_the_inline_path_only_for_a_call_that_is_alone(tiny_server):
    """A lone call skips the queue; calls that arrive together still meet in the queue and batch."""
    model = tiny_server.server.registry.models["tiny-embed"]
    rec, lanes = RecordingEngine(model.scheduler.engine), model.scheduler.lanes
    model.scheduler.engine, model.scheduler.lanes = rec, [rec] * len(lanes)  # every batch, wherever it runs
    core = tiny_server.server.core
    try:
        async def alone():
            await asyncio.sleep(0.01)  # longer than inline_idle_us since any earlier batch
            return await core.embed(pb.EmbedRequest(inputs=["one text alone"]), _Context(), "r")

        async def together():
            reqs = [pb.EmbedRequest(inputs=[f"text number {i}"]) for i in range(6)]
            return await asyncio.gather(*(core.embed(r, _Context(), str(i)) for i, r in enumerate(reqs)))

        tiny_server.call(alone())
        assert len(rec.batches) == 1 and not rec.threads[0].startswith("ember-infer-")
        rec.batches.clear(), rec.threads.clear()
        # The workers may wake between two of the six submissions (tokenizing releases the GIL):
        # hold the first batches until all six calls are in, so the test sees whether the rest
        # meet in the queue, not how fast this machine tokenizes.
        rec.hold_threads = "ember-infer-"
        rec.hold.clear()

        def release():
            end = time.monotonic() + 30
            while model.scheduler.queued() + rec.held_rows < 6 and time.monotonic() < end:
                time.sleep(0.001)
            rec.hold.set()

        releaser = threading.Thread(target=release, daemon=True)
        releaser.start()
        answers = tiny_server.call(together())
        releaser.join()
    finally:
        rec.hold.set()
        model.scheduler.engine, model.scheduler.lanes = rec.real, lanes
    assert len(answers) == 6 and sum(rows for rows, _, _ in rec.batches) == 6
    assert all(t.startswith("ember-infer-") for t in rec.threads)
    assert len(rec.batches) < 6  # merged: those queued behind the first batches ran together


def test_a_client_calling_in_a_loop_keeps_the_inline_path_until_calls_overlap(tiny_server):
    """A call that comes right after a run (sooner than --inline-idle-us) still runs inline while
    calls have come one at a time for --inline-alone-ms, and queues once two were in flight
    together within it; with --inline-alone-ms 0 it always waits for --inline-idle-us."""
    import dataclasses

    model = tiny_server.server.registry.models["tiny-embed"]
    rec, lanes = RecordingEngine(model.scheduler.engine), model.scheduler.lanes
    model.scheduler.engine, model.scheduler.lanes = rec, [rec] * len(lanes)
    core = tiny_server.server.core
    settings = core.settings
    # idle never long enough: what runs inline does so by the alone rule
    core.settings = dataclasses.replace(settings, inline_idle_us=60_000_000, inline_alone_ms=100)

    def inline(call_threads: list[str]) -> list[bool]:
        return [not t.startswith("ember-infer-") for t in call_threads]

    async def one(text: str):
        await core.embed(pb.EmbedRequest(inputs=[text]), _Context(), "r")

    async def scenario():
        seen = {}
        await asyncio.sleep(0.15)  # no two calls in flight together for longer than inline_alone_ms
        n = len(rec.threads)
        for i in range(3):  # a client's loop: each call right after the last one's run
            await one(f"loop call {i}")
        seen["loop"] = inline(rec.threads[n:])
        await asyncio.gather(*(one(f"together {i}") for i in range(4)))  # two or more in flight at once
        n = len(rec.threads)
        await one("right after calls overlapped")
        seen["after overlap"] = inline(rec.threads[n:])
        await asyncio.sleep(0.15)
        n = len(rec.threads)
        await one("alone again")
        await one("and its next call")
        seen["alone again"] = inline(rec.threads[n:])
        core.settings = dataclasses.replace(core.settings, inline_alone_ms=0)
        await asyncio.sleep(0.15)
        n = len(rec.threads)
        await one("alone, but the rule is off")
        seen["rule off"] = inline(rec.threads[n:])
        return seen

    try:
        seen = tiny_server.call(scenario())
    finally:
        core.settings = settings
        model.scheduler.engine, model.scheduler.lanes = rec.real, lanes
    assert seen == {"loop": [True] * 3, "after overlap": [False], "alone again": [True, True],
                    "rule off": [False]}


def test_bulk_batches_grow_while_no_realtime_request_is_about(parts):
    """BULK alone runs in `bulk_solo_batch_tokens` batches; once a REALTIME request came (within
    realtime_recent_s), BULK batches shrink to `bulk_max_batch_tokens` so REALTIME waits little."""
    async def run():
        sched, rec, tok = make(parts, max_batch_tokens=200, bulk_max_batch_tokens=30, bulk_solo_batch_tokens=60,
                               realtime_recent_s=30.0)
        await sched.submit(texts_of_lengths(tok, [10] * 12), priority=BULK, deadline=None).future
        solo = list(rec.batches)
        await sched.submit(texts_of_lengths(tok, [10]), priority=REALTIME, deadline=None).future
        rec.batches.clear()
        await sched.submit(texts_of_lengths(tok, [10] * 12), priority=BULK, deadline=None).future
        mixed = list(rec.batches)
        sched.realtime_recent_s = 0.0  # the REALTIME request is no longer recent
        rec.batches.clear()
        await sched.submit(texts_of_lengths(tok, [10] * 12), priority=BULK, deadline=None).future
        after = list(rec.batches)
        sched.stop()
        return solo, mixed, after

    solo, mixed, after = asyncio.run(run())
    assert [rows for rows, _, _ in solo] == [6, 6]  # 60 tokens each
    assert [rows for rows, _, _ in mixed] == [3, 3, 3, 3]  # 30 tokens each
    assert [rows for rows, _, _ in after] == [6, 6]


def test_bulk_budgets_never_exceed_the_models_budget(parts):
    sched, _, _ = make(parts, max_batch_tokens=40, bulk_max_batch_tokens=50, bulk_solo_batch_tokens=500)
    try:
        assert (sched.bulk_max_batch_tokens, sched.bulk_solo_batch_tokens) == (40, 40)
    finally:
        sched.stop()


async def queued_together_on_lanes(sched, main, lanes, tok, pause_s: float = 0.0,
                                   lengths=(20, 20)) -> tuple[bool, bool]:
    """Hold the main engine with a one-item job, queue two requests of these lengths (one full
    batch each by default) behind it, wait pause_s, let it go. Returns (no lane started while the
    main engine ran, both lanes were in inference at once afterwards)."""
    loop = asyncio.get_running_loop()
    main.hold.clear()
    main.entered.clear()
    for lane in lanes:
        lane.hold.clear()
    blocker = sched.submit(texts_of_lengths(tok, [6]), priority=REALTIME, deadline=None)
    await loop.run_in_executor(None, main.entered.wait, 10)
    a = sched.submit(texts_of_lengths(tok, lengths), priority=REALTIME, deadline=None)
    b = sched.submit(texts_of_lengths(tok, lengths), priority=REALTIME, deadline=None)
    await asyncio.sleep(pause_s)
    waited = not any(lane.entered.is_set() for lane in lanes)
    main.hold.set()
    await blocker.future
    both = await loop.run_in_executor(None, lambda: all(lane.entered.wait(10) for lane in lanes))
    for lane in lanes:
        lane.hold.set()
    await a.future
    await b.future
    return waited, both


def test_a_lone_request_runs_on_the_main_engine_and_several_run_side_by_side_on_lanes(parts):
    """With lanes: a request that has the model to itself runs all its batches on the main engine
    (all the threads), and no lane starts beside it; requests queued together run on the lanes at
    the same time."""
    async def run():
        sched, main, lanes, tok = make_with_lanes(parts)
        await sched.submit(texts_of_lengths(tok, [10] * 8), priority=REALTIME, deadline=None).future
        alone = [rows for rows, _, _ in main.batches], sum(len(x.batches) for x in lanes)
        waited, both = await queued_together_on_lanes(sched, main, lanes, tok, pause_s=0.3)
        sched.stop()
        return alone, waited, both, lanes

    alone, waited, both, lanes = asyncio.run(run())
    assert alone == ([4, 4], 0)  # 8 × 10 tokens in 40-token batches, both on the main engine
    assert waited and both
    assert [b[2] for x in lanes for b in x.batches] == [[20, 20], [20, 20]]
    assert len({t for x in lanes for t in x.threads}) == 2  # two workers


def test_requests_that_fit_one_batch_together_are_split_over_both_lanes(parts):
    """Two requests queued together whose items would make one batch, with every lane free: the
    batch is halved and both lanes run at once. Two clients whose calls kept arriving together
    were merged onto one one-thread lane, the other idle, at half speed (found by
    test_reliability's overload test)."""
    async def run():
        sched, main, lanes, tok = make_with_lanes(parts)
        _, both = await queued_together_on_lanes(sched, main, lanes, tok, lengths=[10, 10])
        sched.stop()
        return main, lanes, both

    main, lanes, both = asyncio.run(run())
    assert both and [b[2] for b in main.batches] == [[6]]
    assert [b[2] for x in lanes for b in x.batches] == [[10, 10], [10, 10]]


def test_with_lanes_a_realtime_request_runs_at_once_beside_bulk_batches(parts):
    """With lanes, BULK batches run on workers of their own at a lower OS priority: a REALTIME
    request starts at once while BULK batches hold every lane, and finishes before them."""
    async def run():
        sched, main, lanes, tok = make_with_lanes(parts, hold_threads="ember-bulk")
        for lane in lanes:
            lane.hold.clear()
        bulk = sched.submit(texts_of_lengths(tok, [20] * 4), priority=BULK, deadline=None)  # two full batches
        loop = asyncio.get_running_loop()
        both = await loop.run_in_executor(None, lambda: all(lane.entered.wait(10) for lane in lanes))
        rt = await asyncio.wait_for(sched.submit(texts_of_lengths(tok, [6]), priority=REALTIME, deadline=None).future,
                                    10)
        bulk_held = not bulk.future.done()
        for lane in lanes:
            lane.hold.set()
        await bulk.future
        sched.stop()
        return both, rt, bulk_held, main, lanes

    both, rt, bulk_held, main, lanes = asyncio.run(run())
    assert both and rt.shape[0] == 1 and bulk_held  # REALTIME done while both BULK batches were held
    assert main.batches == []
    ran = sorted((b[2], t.split("-")[1], n)
                 for x in lanes for b, t, n in zip(x.batches, x.threads, x.nices, strict=True))
    base = os.getpriority(os.PRIO_PROCESS, 0)
    bulk_nice = min(19, base + BULK_NICE) if sys.platform.startswith("linux") else base
    assert ran == [([6], "infer", base), ([20, 20], "bulk", bulk_nice), ([20, 20], "bulk", bulk_nice)]


def test_with_lanes_a_lone_bulk_request_runs_on_the_lanes(parts):
    """A BULK request never takes the main engine once there are lanes (a REALTIME one arriving
    would wait for the whole batch): alone, its batches run on the BULK workers' lanes."""
    async def run():
        sched, main, lanes, tok = make_with_lanes(parts, hold_threads="ember-bulk")
        for lane in lanes:
            lane.hold.clear()
        job = sched.submit(texts_of_lengths(tok, [10] * 8), priority=BULK, deadline=None)
        # Held until both BULK workers are in: a worker that finished its batch before the other
        # woke would rightly halve the rest over the two lanes, and the split would be a race.
        both = await asyncio.get_running_loop().run_in_executor(
            None, lambda: all(lane.entered.wait(10) for lane in lanes))
        for lane in lanes:
            lane.hold.set()
        await job.future
        sched.stop()
        return main, lanes, both

    main, lanes, both = asyncio.run(run())
    assert both and main.batches == []
    assert sorted(b[2] for x in lanes for b in x.batches) == [[10] * 4, [10] * 4]
    assert all(t.startswith("ember-bulk-") for x in lanes for t in x.threads)


def test_until_its_lanes_come_one_batch_at_a_time_runs_on_the_main_engine(parts):
    async def run():
        engine, _ = parts
        sched, main, tok = make(parts, workers=2, lanes_planned=True)
        main.hold.clear()
        first = sched.submit(texts_of_lengths(tok, [6]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, main.entered.wait, 10)
        main.entered.clear()
        second = sched.submit(texts_of_lengths(tok, [7]), priority=REALTIME, deadline=None)
        await asyncio.sleep(0.3)
        alone = not main.entered.is_set()  # the second worker did not start beside the first
        main.hold.set()
        await first.future
        await second.future
        lanes = [RecordingEngine(engine), RecordingEngine(engine)]
        sched.add_lanes(lanes)
        _, both = await queued_together_on_lanes(sched, main, lanes, tok)
        sched.stop()
        return alone, main, both

    alone, main, both = asyncio.run(run())
    assert alone and [b[2] for b in main.batches] == [[6], [7], [6]]
    assert both  # once added, the lanes run side by side


def test_no_lanes_means_every_batch_on_the_one_engine(parts):
    sched, _, _ = make(parts, workers=2)
    try:
        assert sched.lanes == [] and len(sched._threads) == 2
    finally:
        sched.stop()


@pytest.mark.parametrize("threads,workers,lane_threads,sessions", [
    (2, 0, [1, 1], 1),  # auto: two workers sharing one one-thread session (no thread pool to share)
    (4, 2, [2, 2], 2),  # two-thread runs: a session per worker
    (2, 1, [], 0),  # one worker: the main session only
])
def test_cpu_models_get_lanes_with_a_share_of_the_threads(tiny_models_dir, threads, workers, lane_threads, sessions):
    from ember.registry import Registry
    from ember.settings import Settings

    reg = Registry(Settings(intra_op_threads=threads, inference_workers=workers, metrics=False))
    model = reg.load(tiny_models_dir / "tiny-embed", register=False)
    try:
        sched = model.scheduler
        assert sched.lanes == [] and sched.exclusive_main == bool(lane_threads)
        reg.warm_up(model)
        assert model.ready  # serving on the main session; the lanes are built in the background
        assert model.lanes_ready.wait(60)
        opts = [lane.session.get_session_options().intra_op_num_threads for lane in sched.lanes]
        assert opts == lane_threads and len({id(x) for x in sched.lanes}) == sessions
        assert model.engine.session.get_session_options().intra_op_num_threads == threads
        assert len(sched._threads) == (2 * len(lane_threads) or 1)  # with lanes: REALTIME and BULK workers
        assert all(lane.pool is model.engine.pool for lane in sched.lanes)  # one buffer pool
    finally:
        model.scheduler.stop()


def _spin_config(engine) -> tuple[str, str]:
    """(allow_spinning, force_spinning_stop) as the engine's ONNX Runtime session was given them
    ("default" where ember left ORT's own)."""
    opts = engine.session.get_session_options()
    out = []
    for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
        try:
            out.append(opts.get_session_config_entry(key))
        except RuntimeError:  # not set: ONNX Runtime's default (spin, and go on spinning after a run)
            out.append("default")
    return out[0], out[1]


@pytest.mark.parametrize("spinning,after_run,expected", [
    (True, True, ("default", "default")),  # ember's default: ORT's own
    (True, False, ("default", "1")),  # spin during a run only
    (False, True, ("0", "default")),  # no spinning at all (after_run has nothing to do)
])
def test_spinning_settings_reach_every_session_of_a_cpu_model(tiny_models_dir, spinning, after_run, expected):
    from ember.registry import Registry
    from ember.settings import Settings

    reg = Registry(Settings(intra_op_threads=4, inference_workers=2, ort_spinning=spinning,
                            ort_spin_after_run=after_run, metrics=False))
    model = reg.load(tiny_models_dir / "tiny-embed", register=False)
    try:
        reg.warm_up(model)
        assert model.lanes_ready.wait(60)
        engines = [model.engine, *model.scheduler.lanes]
        assert len(engines) == 3 and [_spin_config(e) for e in engines] == [expected] * 3
        ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
        vectors = [e.infer(ids, np.ones_like(ids), np.zeros_like(ids)) for e in engines]
        for v in vectors[1:]:  # the option changes when threads wait, not what a run computes
            np.testing.assert_allclose(v, vectors[0], rtol=1e-5, atol=1e-6)
    finally:
        model.scheduler.stop()


def test_pin_plan_pins_only_cores_the_process_has_to_itself(monkeypatch):
    from ember.engine import pin_plan

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {5, 3}, raising=False)
    assert pin_plan("auto", 2) == [3, 5] and pin_plan("on", 2) == [3, 5]
    assert pin_plan("off", 2) == [] and pin_plan("auto", 1) == [] and pin_plan("on", 3) == []
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    assert pin_plan("auto", 2) == []  # cores likely shared with other processes: auto leaves them be
    assert pin_plan("on", 2) == [0, 1]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning needs Linux and two cores")
@pytest.mark.parametrize("mode", ["on", "off"])
def test_an_inline_call_runs_on_the_first_pinned_core_beside_the_pinned_pool(tiny_models_dir, mode):
    from ember.registry import Registry
    from ember.settings import Settings

    allowed = sorted(os.sched_getaffinity(0))
    reg = Registry(Settings(intra_op_threads=2, inference_workers=1, pin_threads=mode, metrics=False))
    model = reg.load(tiny_models_dir / "tiny-embed", register=False)
    try:
        opts = model.engine.session.get_session_options()
        seen: list[set[int]] = []
        real_infer = model.engine.infer

        def infer(*a):
            seen.append(os.sched_getaffinity(0))  # the calling thread's cores during the run
            return real_infer(*a)

        model.engine.infer = infer
        toks = model.tokenizer.encode(["a lone text"], truncate=True, direction="right")

        async def lone_call():  # on an event loop, as the server's inline path runs
            before = os.sched_getaffinity(0)
            job = model.scheduler.run_inline(toks, priority=REALTIME)
            assert job is not None and (await job.future).shape[0] == 1
            return before, os.sched_getaffinity(0)

        before, after = asyncio.run(lone_call())
        assert after == before  # the calling thread gets its cores back
        if mode == "on":
            assert opts.get_session_config_entry("session.intra_op_thread_affinities") == str(allowed[1] + 1)
            assert seen == [{allowed[0]}]
        else:
            with pytest.raises(RuntimeError):
                opts.get_session_config_entry("session.intra_op_thread_affinities")
            assert seen == [before]
    finally:
        model.scheduler.stop()


def _cgroup(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_lines)
    return root, proc


def test_cgroup_memory_available_is_the_limit_less_what_cannot_be_reclaimed(tmp_path):
    from ember.registry import _cgroup_memory_available

    gib = 1 << 30
    # cgroup v2, the process's own cgroup under the root
    root, proc = _cgroup(tmp_path / "v2", "0::/kubepods/pod1\n", {
        "kubepods/pod1/memory.max": f"{4 * gib}\n", "kubepods/pod1/memory.current": f"{gib}\n",
        "kubepods/pod1/memory.stat": f"anon {gib // 2}\nfile {gib // 2}\ninactive_file {gib // 4}\n"})
    assert _cgroup_memory_available(root, proc) == 4 * gib - (gib - gib // 4)
    # v2 with no limit
    root, proc = _cgroup(tmp_path / "v2max", "0::/\n", {"memory.max": "max\n", "memory.current": "1\n",
                                                        "memory.stat": "inactive_file 0\n"})
    assert _cgroup_memory_available(root, proc) is None
    # cgroup v1 (a hybrid host: the v2 line names no memory controller)
    root, proc = _cgroup(tmp_path / "v1", "4:memory:/docker/abc\n0::/\n", {
        "memory/docker/abc/memory.limit_in_bytes": f"{2 * gib}\n",
        "memory/docker/abc/memory.usage_in_bytes": f"{3 * gib // 2}\n",
        "memory/docker/abc/memory.stat": f"inactive_file 1\ntotal_inactive_file {gib // 2}\n"})
    assert _cgroup_memory_available(root, proc) == gib
    # v1 with no limit: the kernel's "unlimited" is a number near 2**63
    root, proc = _cgroup(tmp_path / "v1max", "4:memory:/\n0::/\n", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n",
        "memory/memory.stat": "total_inactive_file 0\n"})
    assert _cgroup_memory_available(root, proc) is None


@pytest.mark.parametrize("workers,available_mb,built", [
    (0, 100_000, True),  # auto, plenty of memory: the lanes are built
    (0, 1, False),  # auto, a tight container: none, the model serves on its main session
    (2, 1, True),  # asked for explicitly: built regardless (with a warning)
])
def test_lanes_are_built_only_where_their_weights_fit_unless_asked_for(tiny_models_dir, monkeypatch, caplog,
                                                                       workers, available_mb, built):
    from ember import registry as reg_module
    from ember.registry import Registry
    from ember.settings import Settings

    reg = Registry(Settings(intra_op_threads=2, inference_workers=workers, inline_max_tokens=0, metrics=False))
    model = reg.load(tiny_models_dir / "tiny-embed", register=False)
    assert model.lane_plan == (2, 1)  # two workers on one shared one-thread session, when built
    # the memory left once the main session is loaded (the lanes are built after warm-up)
    monkeypatch.setattr(reg_module, "memory_available", lambda: available_mb << 20)
    try:
        reg.warm_up(model)
        assert model.lanes_ready.wait(60)
        assert len(model.scheduler.lanes) == (2 if built else 0)
        assert ("no lanes" in caplog.text) == (not built)

        async def serve_two_at_once():  # with or without lanes, queued requests are answered
            toks = model.tokenizer.encode(["a first text", "and a second, longer one"], truncate=True,
                                          direction="right")
            jobs = [model.scheduler.submit([t], priority=REALTIME, deadline=None) for t in toks]
            return [await j.future for j in jobs]

        rows = asyncio.run(serve_two_at_once())
        assert [r.shape for r in rows] == [(1, model.manifest.dimensions)] * 2
    finally:
        model.scheduler.stop()


# ---- a backlog: deadline order, whole requests, admission ----------------------------------
def _rated(sched, seconds_per_token: float):
    """Fix the scheduler's measured rate (and stop it measuring: a held batch would count as slow)."""
    sched.rate.seconds_per_token = seconds_per_token
    sched.rate.MEASURE_S = float("inf")
    return sched


def test_a_backlog_is_worked_off_a_whole_request_at_a_time(parts):
    """Two big requests queued together: the first one's batches all run before the second's
    (not mixed by length over both, which finishes neither until the end)."""
    async def run():
        sched, rec, tok = make(parts, max_batch_tokens=200)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        first = sched.submit(texts_of_lengths(tok, [10] * 16), priority=REALTIME, deadline=None)
        second = sched.submit(texts_of_lengths(tok, [11] * 16), priority=REALTIME, deadline=None)
        rec.hold.set()
        await asyncio.gather(blocker.future, first.future, second.future)
        sched.stop()
        return rec.batches

    batches = asyncio.run(run())
    assert [ns for _, _, ns in batches[1:]] == [[10] * 8, [10] * 8, [11] * 8, [11] * 8]


def test_the_earliest_deadline_runs_first(parts):
    async def run():
        sched, rec, tok = make(parts, max_batch_size=4)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        now = time.monotonic()
        late = sched.submit(texts_of_lengths(tok, [10] * 4), priority=REALTIME, deadline=now + 60)
        soon = sched.submit(texts_of_lengths(tok, [11] * 4), priority=REALTIME, deadline=now + 30)
        rec.hold.set()
        await asyncio.gather(blocker.future, late.future, soon.future)
        sched.stop()
        return rec.batches

    batches = asyncio.run(run())
    assert [ns for _, _, ns in batches[1:]] == [[11] * 4, [10] * 4]


def test_a_request_the_backlog_cannot_finish_in_time_is_refused_at_once(parts):
    """At 10 ms a token, a request of 100 tokens takes ~1 s: accepted while the work due before it
    leaves it time, refused at once with a retry hint when not; a request without a deadline may
    wait default_deadline_s; one whose own work is longer than its deadline fails at once."""
    async def run():
        sched, rec, tok = make(parts, max_batch_tokens=200, default_deadline_s=0.8)
        _rated(sched, 0.01)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        now = time.monotonic()
        hundred = [10] * 10
        later = sched.submit(texts_of_lengths(tok, hundred), priority=REALTIME, deadline=now + 30)
        sooner = sched.submit(texts_of_lengths(tok, hundred), priority=REALTIME, deadline=now + 1.5)  # goes first
        with pytest.raises(ResourceExhausted) as tight:  # ~1 s of work due before it, ~1 s of its own
            sched.submit(texts_of_lengths(tok, hundred), priority=REALTIME, deadline=now + 1.8)
        open_ = sched.submit(texts_of_lengths(tok, hundred), priority=REALTIME, deadline=None)  # due in 0.8 s
        with pytest.raises(ResourceExhausted) as unbounded:  # would wait ~1 s for `open_`
            sched.submit(texts_of_lengths(tok, hundred), priority=REALTIME, deadline=None)
        with pytest.raises(DeadlineExceeded, match="longer than its deadline"):  # no wait would help
            sched.submit(texts_of_lengths(tok, hundred), priority=REALTIME, deadline=now + 0.5)
        bulk_ok = sched.submit(texts_of_lengths(tok, [10]), priority=BULK, deadline=now + 30)
        _rated(sched, 1e-6)  # (so that the doomed-work rule does not drop what was accepted)
        rec.hold.set()
        await asyncio.gather(blocker.future, later.future, sooner.future, open_.future, bulk_ok.future)
        sched.stop()
        return tight.value, unbounded.value, rec.batches

    tight, unbounded, batches = asyncio.run(run())
    assert "past its deadline" in tight.message and 0.05 <= tight.retry_after_s <= 1.0
    assert "past the 0.8s bound on a wait" in unbounded.message
    assert sum(len(ns) for _, _, ns in batches) == 1 + 10 + 10 + 10 + 1  # what was accepted all ran


def test_a_queued_request_that_can_no_longer_finish_in_time_is_dropped_before_its_deadline(parts):
    async def run():
        sched, rec, tok = make(parts, max_batch_tokens=200)
        _rated(sched, 0.01)
        rec.hold.clear()
        blocker = sched.submit(texts_of_lengths(tok, [4]), priority=REALTIME, deadline=None)
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        deadline = time.monotonic() + 1.5
        doomed = sched.submit(texts_of_lengths(tok, [13] * 10), priority=REALTIME, deadline=deadline)  # ~1.3 s
        await asyncio.sleep(0.5)  # held: now ~1.3 s of work and ~1 s left
        rec.hold.set()
        with pytest.raises(DeadlineExceeded) as e:
            await doomed.future
        failed_at = time.monotonic()
        await blocker.future
        sched.stop()
        return e.value, deadline - failed_at, rec.batches

    err, early, batches = asyncio.run(run())
    assert "cannot finish by its deadline" in err.message and early > 0.5
    assert all(13 not in ns for _, _, ns in batches)  # none of its work was run


def test_batches_of_one_job_ending_together_on_two_lanes_deliver_every_row(parts, monkeypatch):
    """Both lanes run a batch of the same job and finish at the same moment (a barrier in the
    engine), and making a job's results array is slowed (a pause in np.empty on the workers), so
    the two lanes meet exactly where they used to race: the second to find no array made one
    too and replaced the first's, and the job was delivered with rows never written (seen once in
    a rolling restart: 55 rows of uninitialized memory). Every row must be the row computed."""
    engine, _ = parts
    barrier = threading.Barrier(2, timeout=5)
    real_empty = np.empty

    def slow_empty(*a, **kw):
        if threading.current_thread().name.startswith("ember-infer"):
            time.sleep(0.01)  # lets the other lane's thread run here
        return real_empty(*a, **kw)

    monkeypatch.setattr(np, "empty", slow_empty)

    class Together(RecordingEngine):
        def infer(self, ids, mask, type_ids):
            out = self.real.infer(ids, mask, type_ids)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:  # a batch without a partner
                barrier.reset()
            return out

    async def run():
        sched, _, tok = make(parts, workers=2, lanes_planned=True, max_batch_tokens=200, max_batch_size=4)
        sched.add_lanes([Together(engine), Together(engine)])
        toks = texts_of_lengths(tok, [5, 6, 7, 8, 9, 10, 11, 12])
        singles = np.concatenate([engine.infer(t.ids.reshape(1, -1), np.ones((1, t.tokens), np.int64),
                                               np.zeros((1, t.tokens), np.int64)) for t in toks])
        jobs = [sched.submit(toks, priority=REALTIME, deadline=None) for _ in range(6)]
        outs = [await asyncio.wait_for(j.future, 60) for j in jobs]
        sched.stop()
        return outs, singles

    outs, singles = asyncio.run(run())
    for out in outs:
        np.testing.assert_allclose(out, singles, rtol=1e-4, atol=1e-5)
