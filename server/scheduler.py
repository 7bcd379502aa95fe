"""Scheduler stage: merges items of all requests into token-budget batches for one model.

Each request becomes a `Job` of tokenized items. A worker thread per model forms batches:
REALTIME items before BULK ones. A window at the head of the queue is sorted by length and cut
into the batches of least cost (`ext.plan_batches`: a fixed per-run overhead plus the padded
tokens), so similar lengths run together and padding stays small; a batch's padded size
(longest × count) stays within `max_batch_tokens`. Without lanes (below), BULK batches are
kept to `bulk_max_batch_tokens` (small, so a REALTIME item never waits long behind one) while
REALTIME requests are about, i.e. one came in the last `realtime_recent_s`; with none about, BULK
runs alone and its batches grow to `bulk_solo_batch_tokens`, whose lower per-run overhead is
worth a few percent of throughput (the first REALTIME request after a quiet spell waits for at
most one such batch). The batch holding the oldest item runs next, so every item makes progress. Items of
cancelled or expired jobs are dropped before inference. The queue is bounded: a job that does not
fit is refused at once.

On the CPU the workers run on lanes: sessions with a share of the cores each, so that several
batches run at once (a small batch does not keep two cores busy inside one run). When the model
is idle and everything queued belongs to one REALTIME request, that request's batches run one
after another on the main session, which has all the threads (as does the inline path), and no
lane starts meanwhile: a lone request is as fast as it can be, and its batches are not split
unevenly over one-thread lanes. Once several requests are queued, the lanes run side by side; a
batch that would take all of them while every lane is free is halved, so the other lane does not
idle. Each priority has workers of its own on the lanes: REALTIME ones, and BULK ones whose
threads run BULK_NICE steps lower in the OS scheduler. A REALTIME batch thus starts at once
beside running BULK batches and the kernel gives it the cores, so BULK batches keep their solo
size whatever REALTIME traffic there is (and never take the main session, which would hold
REALTIME up). The lanes are built after the model is ready (`add_lanes`); until then one batch at
a time runs on the main session.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .engine import Engine
from .errors import DeadlineExceeded, ResourceExhausted, Unavailable
from .ext import kernels
from .tokenization import Tokenized

log = logging.getLogger(__name__)

REALTIME, BULK = 0, 1
BULK_NICE = 10  # with lanes, BULK workers run this many nice steps below REALTIME ones


@dataclass(eq=False)
class Job:
    """One request's items on their way through a model. Resolved on the caller's event loop."""

    items: list[Tokenized]
    priority: int
    deadline: float | None  # time.monotonic() seconds, or None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    remaining: int = 0
    results: np.ndarray | None = None
    started: float | None = None
    inference_s: float = 0.0
    failed: bool = False
    # Queue bookkeeping (under the scheduler's lock): the items not yet taken into a batch, the
    # tokens of those counted in the queue's backlog, and the job's place in the deadline order.
    pending: deque = field(default_factory=deque)
    backlog_tokens: int = 0
    order: tuple = ()
    # Engine.infer's `outputs` (None: the dense vectors alone, as a float32 array of rows).
    outputs: tuple[str, ...] | None = None

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()

    def queue_s(self) -> float:
        return (self.started or self.enqueued) - self.enqueued


@dataclass(slots=True)
class _Item:
    job: Job
    index: int

    @property
    def length(self) -> int:
        return self.job.items[self.index].tokens


class ModelScheduler:
    """Batching worker(s) for one engine."""

    def __init__(self, engine: Engine, *, max_batch_tokens: int, max_batch_size: int, max_queue_items: int,
                 pad_left: bool, pad_id: int, bulk_max_batch_tokens: int | None = None, batch_overhead_tokens: int = 32,
                 max_wait_us: int = 0, workers: int = 1, inline_max_tokens: int = 0,
                 bulk_solo_batch_tokens: int = 0, realtime_recent_s: float = 1.0, lanes_planned: bool = False,
                 default_deadline_s: float = 30.0):
        self.engine = engine
        # Worker i runs batches on lanes[i] (its own session, or one shared one-thread session),
        # except a lone request's, which take the main engine. No lanes: all on the engine. With
        # lanes_planned, the lanes come later (add_lanes, one per worker); until then, and for
        # lone requests after, one batch at a time runs on the main engine, which has every thread.
        self.lanes: list = []
        self.exclusive_main = lanes_planned
        self._main_running = False  # a batch is on the main engine and, when exclusive_main, alone
        self.max_batch_tokens = max_batch_tokens
        # BULK batches never exceed the model's own budget
        self.bulk_max_batch_tokens = min(bulk_max_batch_tokens or max_batch_tokens, max_batch_tokens)
        self.bulk_solo_batch_tokens = min(bulk_solo_batch_tokens or self.bulk_max_batch_tokens, max_batch_tokens)
        self.realtime_recent_s = realtime_recent_s
        self._last_realtime = float("-inf")  # time.monotonic() of the last REALTIME submission
        self.batch_overhead_tokens = batch_overhead_tokens
        self.max_wait_s = max_wait_us / 1e6
        self.max_batch_size = max_batch_size
        self.max_queue_items = max_queue_items
        self.pad_left = pad_left
        self.pad_id = pad_id
        # Per priority: the jobs with items not yet taken, in deadline order (earliest first; a job
        # without a deadline counts as due default_deadline_s after it came, and equal deadlines
        # keep arrival order), with their counts of items and backlog tokens.
        self._jobs: tuple[list[Job], list[Job]] = ([], [])
        self._items = [0, 0]
        self._backlog = [0, 0]  # tokens of the items queued, by priority
        self._open = [0, 0]  # ... of those, the tokens of requests without a deadline
        self._seq = itertools.count()
        self.default_deadline_s = default_deadline_s
        self.rate = _Throughput()
        # With lanes, each priority has workers of its own: `workers` REALTIME ones, and as many
        # BULK ones at a lower OS priority (BULK_NICE), so a REALTIME batch starts at once beside
        # the BULK batches and takes the cores from them. Without lanes, every worker takes both
        # (REALTIME first). Each kind waits on its own condition; both share one lock.
        self._roles: list[int | None] = [REALTIME] * workers + [BULK] * workers if lanes_planned else [None] * workers
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # REALTIME workers (all workers when there are no roles)
        self._bulk_cond = threading.Condition(lock) if lanes_planned else self._cond
        self._running = {REALTIME: 0, BULK: 0, None: 0}  # batches running now, by worker role
        self._stopping = False
        self._busy = 0  # batches running now (workers and the inline path)
        self.idle_since = time.monotonic()  # when the last batch ended (valid while _busy == 0)
        self.inline_max_tokens = inline_max_tokens
        self.metrics = None  # ember.metrics.Metrics, when the server has metrics on
        self.name = engine.manifest.name
        self.workers = workers
        self._threads = [
            threading.Thread(target=self._run, args=(i, role), daemon=True,
                             name=f"ember-{'bulk' if role == BULK else 'infer'}-{engine.manifest.name}-{i % workers}")
            for i, role in enumerate(self._roles)
        ]
        for t in self._threads:
            t.start()

    # ---- submission (event loop side) -------------------------------------------------------
    def queued(self) -> int:
        return self._items[0] + self._items[1]

    def backlog_seconds(self) -> float:
        """Estimated time to work off everything queued, at the measured rate (0 before a measure)."""
        spt = self.rate.seconds_per_token
        return 0.0 if spt is None else spt * (self._backlog[REALTIME] + self._backlog[BULK])

    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        return not self._busy and not self.queued()

    def submit(self, items: list[Tokenized], *, priority: int, deadline: float | None,
               outputs: tuple[str, ...] | None = None) -> Job:
        """Queue a job; `job.future` resolves to its results array (rows in input order).

        Refused at once (ResourceExhausted, with a retry hint) when the queue is full, or when the
        backlog that runs before it, at the rate the model has been measured to drain it, would
        not let it finish by its deadline (a job without one: within default_deadline_s).
        """
        job = _new_job(items, priority, deadline, outputs)
        tokens = sum(t.tokens for t in items)
        with self._cond:
            if self._stopping:
                raise Unavailable("the model is being unloaded")
            if self.queued() + len(items) > self.max_queue_items:
                raise ResourceExhausted(
                    f"the queue of model {self.engine.manifest.name} is full "
                    f"({self.queued()} items waiting, limit {self.max_queue_items}); retry later",
                    retry_after_s=0.05 + 0.001 * self.queued() / max(1, self.max_batch_size),
                )
            due = deadline if deadline is not None else (
                job.enqueued + self.default_deadline_s if self.default_deadline_s else math.inf)
            job.order = (due, next(self._seq))
            jobs = self._jobs[priority]
            at = bisect.bisect_right(jobs, job.order, key=_order)
            self._admit(job, priority, at, tokens, due)
            if priority == REALTIME:
                self._last_realtime = job.enqueued
            job.pending.extend(range(len(items)))
            job.backlog_tokens = tokens
            jobs.insert(at, job)
            self._items[priority] += len(items)
            self._backlog[priority] += tokens
            if deadline is None:
                self._open[priority] += tokens
            (self._bulk_cond if priority == BULK else self._cond).notify()
        job.future.add_done_callback(lambda _f, job=job: self._settle(job))
        return job

    def _admit(self, job: Job, priority: int, at: int, tokens: int, due: float) -> None:
        """Refuse `job` if what runs before it (REALTIME work, and for BULK the BULK jobs due
        earlier) would keep it from finishing by `due`, at the measured rate (lock held)."""
        now = time.monotonic()
        if job.deadline is not None and now >= job.deadline:
            raise self._late(len(job.items), "the deadline passed before inference")
        spt = self.rate.seconds_per_token
        if spt is None or due == math.inf:
            return  # not measured yet, or no bound to keep
        # The work before it: each stretch of jobs (REALTIME ones, then for BULK the BULK ones due
        # earlier) takes its tokens' time; but the requests with a deadline in it take no longer
        # than until the last of them is due: past their deadlines the rest of them is dropped.
        segments = [(priority, at)]
        if priority == BULK:
            segments.insert(0, (REALTIME, len(self._jobs[REALTIME])))
        ahead, wait = 0, 0.0
        for p, end in segments:
            jobs = self._jobs[p]
            if not end:
                continue
            if end == len(jobs):
                n, open_n = self._backlog[p], self._open[p]
            else:
                n = sum(j.backlog_tokens for j in jobs[:end])
                open_n = sum(j.backlog_tokens for j in jobs[:end] if j.deadline is None)
            ahead += n
            wait += min(spt * (n - open_n), max(0.0, jobs[end - 1].order[0] - now)) + spt * open_n
        own = spt * tokens
        if job.deadline is None:  # the bound is on the wait: a big request may take longer to run
            own = 0.0
        elif now + own > due:  # too short a deadline for the work itself: waiting would not help
            raise self._late(len(job.items), f"the request's {tokens} tokens take ~{own:.3f}s at the model's "
                                             f"rate, longer than its deadline (in {max(0.0, due - now):.3f}s)")
        finish = now + wait + own
        if finish <= due:
            return
        if self.metrics is not None:
            self.metrics.of(self.metrics.refused_early, self.name).inc()
        budget = "its deadline" if job.deadline is not None else f"the {self.default_deadline_s:g}s bound on a wait"
        raise ResourceExhausted(
            f"model {self.name} is overloaded: the {ahead} tokens queued before this request would take "
            f"~{wait:.2f}s and it ~{own:.2f}s more, past {budget} (in {max(0.0, due - now):.2f}s); "
            f"retry later or on another replica",
            retry_after_s=min(30.0, max(0.05, finish - due)),
        )

    def _late(self, items: int, message: str) -> DeadlineExceeded:
        """The error for a request refused for its deadline before it was queued, counted as
        _drop_dead counts the queued items it drops."""
        if self.metrics is not None:
            self.metrics.of(self.metrics.deadline_dropped, self.name).inc(items)
        return DeadlineExceeded(message)

    def _unqueue(self, job: Job, p: int, n: int) -> None:
        """n of a job's tokens leave the queue's backlog, and the job's own count (lock held)."""
        job.backlog_tokens -= n
        self._backlog[p] -= n
        if job.deadline is None:
            self._open[p] -= n

    def _settle(self, job: Job) -> None:
        """The job's future is done (answered, failed, cancelled): what it still had queued no
        longer counts in the backlog (its items are dropped when they reach the head)."""
        if job.backlog_tokens:
            with self._cond:
                self._unqueue(job, job.priority, job.backlog_tokens)

    def run_inline(self, items: list[Tokenized], *, priority: int, deadline: float | None = None,
                   min_idle_s: float = 0.0, outputs: tuple[str, ...] | None = None) -> Job | None:
        """Run a small REALTIME job on the calling (event loop) thread when the model is idle.

        With nothing queued and nothing running there is nothing to batch with, and the two thread
        hops of the queue (to the worker and back to the loop) are pure latency. The caller decides
        that no other request is in flight; this checks the model's side and claims it. Returns the
        finished job, or None when the job must take the queue. A job already past its deadline is
        refused, as the queue drops one (`_drop_dead`).
        """
        if priority != REALTIME or not items or \
                max(t.tokens for t in items) * len(items) > self.inline_max_tokens:
            return None
        if deadline is not None and time.monotonic() >= deadline:
            raise self._late(len(items), "the deadline passed before inference")
        job = _new_job(items, priority, deadline, outputs)
        with self._cond:
            if self._stopping or self._busy or self.queued() or time.monotonic() - self.idle_since < min_idle_s:
                return None
            self._claim()
            self._running[REALTIME] += 1
            self._main_running = self.exclusive_main
            self._last_realtime = job.enqueued
        # The engine's pool threads are pinned to the other cores (Settings.pin_threads): run beside
        # them, not on one of theirs, where the OS may place a thread just woken.
        core = getattr(self.engine, "caller_core", None)
        mask = _pin_here(core) if core is not None else None
        tokens = 0
        try:
            self._execute([_Item(job, i) for i in range(len(items))], _deliver_here, self.engine)
            tokens = sum(t.tokens for t in items)
        except Exception as e:
            log.exception("inference failed for model %s", self.engine.manifest.name)
            job.failed = True
            job.future.set_exception(e)
        finally:
            if mask is not None:
                _unpin_here(mask)
            self._batch_done(tokens=tokens)
        return job

    def add_lanes(self, lanes: list) -> None:
        """Give the workers their lanes (one per worker thread), built after the model went ready."""
        if not self.exclusive_main or len(lanes) != self.workers:
            raise ValueError(f"{len(lanes)} lanes for {self.workers} workers (lanes_planned={self.exclusive_main})")
        with self._cond:
            self.lanes = list(lanes)
            self._wake_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._wake_all()
        for t in self._threads:
            t.join(timeout=10)

    # ---- worker side ------------------------------------------------------------------------
    def _wake_all(self) -> None:
        self._cond.notify_all()
        if self._bulk_cond is not self._cond:
            self._bulk_cond.notify_all()

    def _run(self, i: int, role: int | None) -> None:
        if role == BULK:
            _lower_thread_priority(BULK_NICE)
        while True:
            batch, main = self._next_batch(role)
            if batch is None:
                return
            tokens = 0
            try:
                self._execute(batch, _deliver_threadsafe, self.engine if main else self.lanes[i % self.workers])
                tokens = sum(it.length for it in batch)
            except Exception as e:  # a failed batch fails its jobs, never the worker
                log.exception("inference failed for model %s", self.engine.manifest.name)
                for it in batch:
                    self._fail(it.job, e)
            finally:
                self._batch_done(role, tokens)

    def _batch_done(self, role: int | None = REALTIME, tokens: int = 0) -> None:
        """A batch (worker or inline) of `tokens` real tokens has ended: the model is idle from now
        unless more is queued."""
        with self._cond:
            self._busy -= 1
            self._running[role] -= 1
            self.idle_since = time.monotonic()
            self.rate.ran(tokens, self.idle_since, idle=not self._busy)
            self._main_running = False  # at most one batch runs while it is set: this one
            if self.queued():
                self._wake_all()  # with lanes, every worker may have waited for the main session

    def _next_batch(self, role: int | None = None) -> tuple[list[_Item] | None, bool]:
        """The next batch for a worker of this role (None: either priority, REALTIME first), and
        whether it runs on the main engine. It does when there are no lanes, or when one request
        has the model to itself (nothing running, only its items queued) and is not BULK: a BULK
        batch on the main engine would hold up every REALTIME one."""
        cond = self._bulk_cond if role == BULK else self._cond
        with self._cond:
            while True:
                if role is None:
                    p = BULK if not self._items[REALTIME] else REALTIME
                else:
                    p = role
                if self._stopping and not self._items[p]:
                    return None, False
                self._drop_dead(p)
                queued = self._items[p] > 0
                if queued and self._main_running:  # the main session has every thread: wait for it
                    cond.wait()
                    continue
                if queued:
                    wait = self._fill_wait(p)
                    if wait > 0:
                        cond.wait(wait)
                        continue
                    main = not self.lanes or (not self._busy and role != BULK and self._one_job_queued())
                    # Several requests and every lane of this role free: a batch that would take
                    # all of them is halved, so that a second lane takes the rest at once instead of
                    # idling (two clients whose calls arrived together stayed merged on one lane).
                    batch = self._take(p, halve=not main and not self._running[role])
                    if self.lanes and self._items[p]:
                        cond.notify()  # another worker may take the rest now
                    self._claim()
                    self._running[role] += 1
                    self._main_running = main and self.exclusive_main
                    return batch, main
                cond.wait()

    def _claim(self) -> None:
        """A batch starts (lock held)."""
        if not self._busy:
            self.rate.busy(time.monotonic())
        self._busy += 1

    def _one_job_queued(self) -> bool:
        """Everything queued belongs to one job (called with the lock held)."""
        return len(self._jobs[REALTIME]) + len(self._jobs[BULK]) <= 1

    def _budget(self, bulk: bool) -> int:
        """Padded tokens allowed in the next batch (called with the lock held)."""
        if not bulk:
            return self.max_batch_tokens
        if self.lanes and self._bulk_cond is not self._cond:
            return self.bulk_solo_batch_tokens  # REALTIME batches start beside BULK ones: no need to wait
        if time.monotonic() - self._last_realtime < self.realtime_recent_s:
            return self.bulk_max_batch_tokens
        return self.bulk_solo_batch_tokens

    def _fill_wait(self, p: int) -> float:
        """Seconds to wait for more items (max_wait): only while the batch would be far from full."""
        if self.max_wait_s <= 0 or self._stopping:
            return 0.0
        budget = self._budget(p == BULK)
        if self._items[p] >= self.max_batch_size or self._backlog[p] * 2 >= budget:
            return 0.0
        return min(j.enqueued for j in self._jobs[p]) + self.max_wait_s - time.monotonic()

    def _drop_dead(self, p: int) -> None:
        """Remove the jobs that are cancelled, failed or past their deadline from the head of the
        queue (as far as the next batch can reach), failing the expired ones. So are the jobs that
        the measured rate says cannot finish by their deadline, given the jobs before them: run,
        they would only miss it later, and delay every job after them."""
        now = time.monotonic()
        spt = self.rate.seconds_per_token
        jobs = self._jobs[p]
        i = seen = 0
        work = 0.0  # estimated seconds until the job being looked at is done
        while i < len(jobs) and seen < self.max_batch_size * 4:
            job = jobs[i]
            expired = job.deadline is not None and now >= job.deadline
            doomed = not expired and job.deadline is not None and spt is not None and \
                now + work + spt * job.backlog_tokens > job.deadline
            if not (job.cancelled or job.failed or expired or doomed):
                seen += len(job.pending)
                work += spt * job.backlog_tokens if spt is not None else 0.0
                i += 1
                continue
            del jobs[i]
            queued = job.backlog_tokens
            self._items[p] -= len(job.pending)
            self._unqueue(job, p, queued)
            by_deadline = expired or (doomed and not job.cancelled)
            if doomed and not job.cancelled:
                self._fail(job, DeadlineExceeded(
                    f"the request cannot finish by its deadline (in {job.deadline - now:.2f}s): its {queued} "
                    f"tokens still queued take ~{spt * queued:.2f}s at the model's rate, after ~{work:.2f}s of "
                    "work due before it"))
            elif expired and not job.cancelled:
                self._fail(job, DeadlineExceeded("the deadline passed while the request was queued"))
            m = self.metrics
            if m is not None and (by_deadline or job.cancelled):
                # gRPC cancels a call whose deadline passed: count those as expired, not cancelled
                m.of(m.deadline_dropped if by_deadline else m.cancelled_dropped, self.name).inc(len(job.pending))
            job.pending.clear()

    def _take(self, p: int, halve: bool = False) -> list[_Item]:
        """The next batch of priority p: from a window of whole jobs at the head of the deadline
        order (at least two batches' worth of items), the least-cost batch that holds the first
        job's first waiting item. A backlog is thus worked off a request at a time, earliest
        deadline first, while small requests still share batches. With halve, at most half of the
        window when one batch would otherwise take it all."""
        jobs = self._jobs[p]
        window: list[_Item] = []
        spanned = 0
        for job in jobs:
            window.extend(_Item(job, i) for i in job.pending)
            spanned += 1
            if len(window) >= self.max_batch_size * 2:
                break
        order = sorted(range(len(window)), key=lambda i: -window[i].length)  # stable: ties keep arrival order
        lengths = np.fromiter((window[i].length for i in order), dtype=np.int64, count=len(order))
        budget = self._budget(p == BULK)
        ends = kernels.plan_batches(lengths, budget, self.max_batch_size, self.batch_overhead_tokens)
        if halve and len(ends) == 1 and len(window) > 1 and len(window) == self._items[p]:
            ends = kernels.plan_batches(lengths, budget, (len(window) + 1) // 2, self.batch_overhead_tokens)
        rank_of_first = order.index(0)
        g = int(np.searchsorted(ends, rank_of_first, side="right"))
        start = int(ends[g - 1]) if g else 0
        batch = [window[i] for i in sorted(order[start:int(ends[g])])]
        taken: dict[int, set[int]] = {}
        for it in batch:
            taken.setdefault(id(it.job), set()).add(it.index)
            self._unqueue(it.job, p, it.length)
        self._items[p] -= len(batch)
        for job in {id(it.job): it.job for it in batch}.values():
            chosen = taken[id(job)]
            job.pending = deque(i for i in job.pending if i not in chosen)
        if any(not j.pending for j in jobs[:spanned]):
            jobs[:spanned] = [j for j in jobs[:spanned] if j.pending]
        return batch

    def _execute(self, batch: list[_Item], deliver, engine) -> None:
        t0 = time.monotonic()
        toks = [it.job.items[it.index] for it in batch]
        if len(toks) == 1 and not getattr(engine, "bind_io", False):
            # One input, not bound: its own arrays are the batch, with nothing to pad or pack.
            t = toks[0]
            ids = t.ids.reshape(1, -1)
            type_ids = t.type_ids.reshape(1, -1) if engine.needs_type_ids and t.type_ids is not None else None
            self._run_batch(batch, deliver, engine, ids, np.ones_like(ids), type_ids, t0)
            return
        seq_len = max(t.tokens for t in toks)
        lengths = np.fromiter((t.tokens for t in toks), dtype=np.int64, count=len(toks))
        offsets = np.zeros(len(toks) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # The engine's pooled buffers (page-locked on a GPU machine), packed in place and bound to
        # the session as they are; engines without a pool (or test doubles) get new arrays.
        buffers = getattr(engine, "buffers", None)
        ids_o, mask_o, type_o, blocks = buffers(len(toks), seq_len) if buffers else (None, None, None, [])
        try:
            ids, mask = kernels.pack_batch(np.concatenate([t.ids for t in toks]), offsets, seq_len, self.pad_id,
                                           self.pad_left, ids_o, mask_o)
            type_ids = None
            if engine.needs_type_ids and toks[0].type_ids is not None:
                type_ids, _ = kernels.pack_batch(np.concatenate([t.type_ids for t in toks]), offsets, seq_len, 0,
                                                 self.pad_left, type_o)
            self._run_batch(batch, deliver, engine, ids, mask, type_ids, t0)
        finally:
            if blocks:
                engine.release(blocks)

    def _run_batch(self, batch: list[_Item], deliver, engine, ids: np.ndarray, mask: np.ndarray,
                   type_ids: np.ndarray | None, t0: float) -> None:
        """Run the packed batch and hand each finished job its rows."""
        for it in batch:
            if it.job.started is None:
                it.job.started = t0
        # Jobs that want more than the dense vectors share the batch's one run with those that do not.
        wanted = {o for it in batch if it.job.outputs for o in it.job.outputs}
        if wanted and any(it.job.outputs is None for it in batch):
            wanted.add("dense")
        out = engine.infer(ids, mask, type_ids, outputs=tuple(sorted(wanted))) if wanted else \
            engine.infer(ids, mask, type_ids)
        elapsed = time.monotonic() - t0
        if self.metrics is not None:
            m = self.metrics
            m.of(m.inference_seconds, self.name).observe(elapsed)
            m.of(m.batch_size, self.name).observe(len(batch))
            m.of(m.batch_tokens, self.name).observe(ids.size)
        rows_of: dict[int, tuple[Job, list[int]]] = {}
        for row, it in enumerate(batch):
            rows_of.setdefault(id(it.job), (it.job, []))[1].append(row)
        for job, rows in rows_of.values():
            if job.failed:
                continue
            # Batches of one job can end at once on two lanes: its results array is made once, and
            # its count of rows still to come is kept under the lock (a lost update would deliver
            # the job with rows never written, or never deliver it).
            mine = out[rows]
            if job.outputs is None and mine.dtype == object:  # in a batch with jobs that wanted more
                mine = np.stack([o.dense for o in mine])
            if job.results is None:
                with self._cond:
                    if job.results is None:
                        job.results = np.empty((len(job.items),) + mine.shape[1:], dtype=mine.dtype)
            job.results[[batch[r].index for r in rows]] = mine
            with self._cond:
                job.inference_s += elapsed
                job.remaining -= len(rows)
                finished = job.remaining == 0
            if finished:
                deliver(job)

    def _fail(self, job: Job, err: Exception) -> None:
        if job.failed:
            return
        job.failed = True
        _post(job.loop, _reject, job.future, err)


class _Throughput:
    """How fast the model works off its queue: wall seconds per real token while it is busy (one
    batch or several at once on the lanes), measured over stretches of at least MEASURE_S and
    smoothed. Padding and per-run overhead are in it, at the mix of the traffic being served."""

    MEASURE_S = 0.25
    SMOOTHING = 0.3
    # Stretches whose batches averaged fewer tokens are not counted: lone short texts are mostly
    # per-run overhead, and the figure is for a backlog, which runs in full batches.
    MIN_BATCH_TOKENS = 64

    def __init__(self) -> None:
        self.seconds_per_token: float | None = None
        self._since: float | None = None  # start of the busy stretch being measured
        self._busy_s = 0.0
        self._tokens = 0
        self._batches = 0

    def seed(self, seconds: float, tokens: int) -> None:
        """A first figure (the warm-up's timed batch), until traffic measures a real one."""
        if self.seconds_per_token is None and tokens > 0:
            self.seconds_per_token = seconds / tokens

    def busy(self, now: float) -> None:
        self._since = now

    def ran(self, tokens: int, now: float, idle: bool) -> None:
        self._tokens += tokens
        self._batches += 1
        if self._since is None:
            return
        if idle or now - self._since >= self.MEASURE_S:
            self._busy_s += now - self._since
            self._since = None if idle else now
        if self._busy_s >= self.MEASURE_S:
            if self._tokens >= self.MIN_BATCH_TOKENS * self._batches:
                spt = self._busy_s / self._tokens
                old = self.seconds_per_token
                self.seconds_per_token = spt if old is None else old + self.SMOOTHING * (spt - old)
            self._busy_s, self._tokens, self._batches = 0.0, 0, 0


def _order(job: Job) -> tuple:
    return job.order


def _lower_thread_priority(steps: int) -> None:
    """Lower the calling thread's OS scheduling priority by `steps` nice steps (Linux, where nice is
    per thread; raising it needs no privilege). Elsewhere the thread keeps its priority."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError as e:
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, e)


def _pin_here(core: int) -> set[int] | None:
    """Pin the calling thread to `core`: its cores before, or None where the OS refused (a cpuset
    changed under the process), and then the run goes ahead unpinned."""
    try:
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})
        return mask
    except OSError as e:
        log.debug("could not pin the calling thread to core %d: %s", core, e)
        return None


def _unpin_here(mask: set[int]) -> None:
    try:
        os.sched_setaffinity(0, mask)
    except OSError as e:  # the OS took some of those cores away meanwhile: keep what it allows
        log.debug("could not give the calling thread its cores back: %s", e)


def _new_job(items: list[Tokenized], priority: int, deadline: float | None,
             outputs: tuple[str, ...] | None = None) -> Job:
    loop = asyncio.get_running_loop()
    return Job(items=items, priority=priority, deadline=deadline, loop=loop, future=loop.create_future(),
               remaining=len(items), outputs=outputs)


def _post(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """Hand a result to the caller's loop; a loop already closed (server gone) has no one to tell."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _deliver_threadsafe(job: Job) -> None:
    _post(job.loop, _resolve, job.future, job.results)


def _deliver_here(job: Job) -> None:
    job.future.set_result(job.results)


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _reject(fut: asyncio.Future, err: Exception) -> None:
    if not fut.done():
        fut.set_exception(err)
