"""GPU → CPU fallback with a circuit breaker.

closed: batches go to the accelerator session; `threshold` consecutive errors open the breaker.
open: batches go to the CPU session; after `recovery_s` the next batch is a trial (half-open).
half-open: one trial batch goes to the accelerator; success closes the breaker, an error opens it
again. A batch that fails on the accelerator is retried once on the CPU, so the client sees no
failure. The model stays SERVING throughout; the breaker's state says it is degraded.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, threshold: int = 3, recovery_s: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] | None = None):
        if threshold < 1 or recovery_s < 0:
            raise ValueError("threshold must be >= 1 and recovery_s >= 0")
        self.threshold = threshold
        self.recovery_s = recovery_s
        self.clock = clock
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self.trial_in_flight = False
        self.on_change = on_change
        self._lock = threading.Lock()

    def _notify(self, before: str) -> None:
        if self.state != before and self.on_change:
            self.on_change()

    def allow_primary(self) -> bool:
        """May this batch go to the accelerator? (In half-open, only one trial at a time.)"""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self.clock() - self.opened_at >= self.recovery_s:
                self.state = HALF_OPEN
            if self.state == HALF_OPEN and not self.trial_in_flight:
                self.trial_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            before = self.state
            if self.state != CLOSED:
                log.warning("circuit breaker closed: the accelerator answers again")
            self.state, self.failures, self.trial_in_flight = CLOSED, 0, False
        self._notify(before)

    def record_failure(self) -> None:
        with self._lock:
            before = self.state
            self.failures += 1
            self.trial_in_flight = False
            if self.state == HALF_OPEN or self.failures >= self.threshold:
                if self.state != OPEN:
                    log.error("circuit breaker open after %d consecutive accelerator errors; serving on CPU "
                              "(next trial in %.0fs)", self.failures, self.recovery_s)
                self.state, self.opened_at = OPEN, self.clock()
        self._notify(before)


class FallbackEngine:
    """An engine that runs on the accelerator session and falls back to the CPU session."""

    def __init__(self, primary, fallback, breaker: CircuitBreaker):
        self.primary, self.fallback, self.breaker = primary, fallback, breaker
        self.manifest = primary.manifest
        self.needs_type_ids = primary.needs_type_ids
        self.providers = primary.providers
        self.unavailable = primary.unavailable
        self.primary_errors = 0
        self.primary_batches = 0
        self.fallback_batches = 0
        self.last_switch_s = 0.0  # from the accelerator's error to the CPU's answer

    @property
    def pool(self):
        """The accelerator engine's buffer pool (the CPU session shares it), for the metrics."""
        return getattr(self.primary, "pool", None)

    def buffers(self, batch: int, seq_len: int):
        """The accelerator engine's pooled input buffers (the CPU retry reads the same arrays)."""
        fn = getattr(self.primary, "buffers", None)
        return fn(batch, seq_len) if fn else (None, None, None, [])

    def release(self, blocks: list) -> None:
        self.primary.release(blocks)

    @property
    def degraded(self) -> bool:
        return self.breaker.state != CLOSED

    def infer(self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None,
              outputs: tuple[str, ...] | None = None) -> np.ndarray:
        extra = {} if outputs is None else {"outputs": outputs}
        if self.breaker.allow_primary():
            try:
                out = self.primary.infer(ids, mask, type_ids, **extra)
            except Exception as e:  # any accelerator failure (OOM, driver, a run over --gpu-timeout-ms): retry on CPU
                failed_at = time.monotonic()
                self.primary_errors += 1
                self.breaker.record_failure()
                log.warning("model %s: accelerator batch failed (%s: %s); retrying on CPU", self.manifest.name,
                            type(e).__name__, e)
                out = self._on_cpu(ids, mask, type_ids, extra)
                self.last_switch_s = time.monotonic() - failed_at
                return out
            self.breaker.record_success()
            self.primary_batches += 1
            return out
        return self._on_cpu(ids, mask, type_ids, extra)

    def _on_cpu(self, ids, mask, type_ids, extra: dict) -> np.ndarray:
        self.fallback_batches += 1
        return self.fallback.infer(ids, mask, type_ids, **extra)
