"""Prometheus metrics, on their own HTTP port (`--metrics-port`, `--no-metrics` to switch off).

Each server has its own registry (several servers can live in one process, as in the tests).
Counters and histograms are updated on the request path; what is a state rather than an event
(queue depth, breaker state, active providers, model load time) is read at scrape time by a
collector, so it is never stale.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
BREAKER_STATE = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self, registry: Registry):
        self.prom = CollectorRegistry(auto_describe=True)
        r = self.prom
        self.requests = Counter("ember_requests", "RPCs answered, by RPC, model and status code",
                                ("rpc", "model", "code"), registry=r)
        self.request_seconds = Histogram("ember_request_duration_seconds", "time to answer one RPC (or stream "
                                         "message)", ("rpc",), buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("ember_queue_duration_seconds", "time a request's items waited for "
                                       "inference", ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.tokenize_seconds = Histogram("ember_tokenize_duration_seconds", "time to tokenize a request",
                                          ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("ember_inference_duration_seconds", "time of one inference batch "
                                           "(pack, run, pool)", ("model",), buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ember_batch_size", "items in one inference batch", ("model",),
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("ember_batch_tokens", "padded tokens in one inference batch", ("model",),
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.input_tokens = Counter("ember_input_tokens", "tokens of the inputs served", ("model",), registry=r)
        self.deadline_dropped = Counter("ember_deadline_dropped", "items dropped before inference because their "
                                        "request's deadline had passed", ("model",), registry=r)
        self.cancelled_dropped = Counter("ember_cancelled_dropped", "items dropped before inference because their "
                                         "request was cancelled", ("model",), registry=r)
        self.refused_early = Counter("ember_overload_refused", "requests refused at once because the backlog "
                                     "before them would not let them finish by their deadline", ("model",),
                                     registry=r)
        self.cache_hits = Counter("ember_cache_hits", "embedding cache hits (inputs)", ("model",), registry=r)
        self.cache_misses = Counter("ember_cache_misses", "embedding cache misses (inputs)", ("model",), registry=r)
        r.register(_StateCollector(registry))
        self.http = None
        self._children: dict[tuple, object] = {}

    def of(self, metric, *labels: str):
        """metric.labels(*labels), kept: prometheus_client checks the labels and takes a lock on every
        labels() call, a cost paid several times per request on the hot path otherwise. Label sets
        are bounded (RPCs × models × status codes) and a child, once made, lives as long anyway."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (port 0 = any free port)."""
        try:
            self.http, _ = start_http_server(port, addr=host, registry=self.prom)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {host}:{port} ({e}); choose another --metrics-port or "
                          "--no-metrics") from e
        return self.http.server_port

    def stop(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


class _StateCollector:
    """Per-model state, read from the registry at scrape time."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def describe(self):
        return []

    def collect(self):
        depth = GaugeMetricFamily("ember_queue_depth", "items waiting for inference", labels=["model"])
        backlog = GaugeMetricFamily("ember_queue_backlog_seconds", "estimated seconds to work off the queue at "
                                    "the model's measured rate (what admission compares deadlines with)",
                                    labels=["model"])
        loaded = GaugeMetricFamily("ember_model_load_seconds", "time to load the model (session + tokenizer)",
                                   labels=["model"])
        ready = GaugeMetricFamily("ember_model_ready", "1 when the model is warm and serving", labels=["model"])
        providers = GaugeMetricFamily("ember_provider_active", "1 for each execution provider really active",
                                      labels=["model", "provider"])
        breaker = GaugeMetricFamily("ember_breaker_state", "accelerator circuit breaker: 0 closed, 1 half-open, "
                                    "2 open (CPU serving)", labels=["model"])
        fallback = GaugeMetricFamily("ember_fallback_batches", "batches retried or served on the CPU after an "
                                     "accelerator error (total since start)", labels=["model"])
        accel = GaugeMetricFamily("ember_accelerator_batches", "batches answered by the accelerator (total since "
                                  "start); fallback rate = fallback / (fallback + these)", labels=["model"])
        accel_errors = GaugeMetricFamily("ember_accelerator_errors", "accelerator batch errors, timeouts included "
                                         "(total since start)", labels=["model"])
        switch = GaugeMetricFamily("ember_fallback_switch_seconds", "the last accelerator failure: seconds from "
                                   "the error to the CPU's answer", labels=["model"])
        pool = {k: GaugeMetricFamily(f"ember_buffer_pool_{k}", help_, labels=["model"]) for k, help_ in (
            ("hits", "buffer requests served from the pool (total)"),
            ("allocations", "buffers allocated (total)"),
            ("bytes_held", "bytes of host buffers the pool holds now (free and in use)"),
            ("peak_bytes", "most bytes the pool has held"),
            ("pinned", "1 when the pool's buffers are page-locked (CUDA present)"))}
        errors = GaugeMetricFamily("ember_model_load_errors", "1 for each model refused at load", labels=["model"])
        for name, model in list(self.registry.models.items()):
            depth.add_metric([name], model.scheduler.queued())
            backlog.add_metric([name], model.scheduler.backlog_seconds())
            loaded.add_metric([name], model.load_seconds)
            ready.add_metric([name], 1.0 if model.ready else 0.0)
            for p in model.engine.providers:
                providers.add_metric([name, p], 1.0)
            cb = getattr(model.engine, "breaker", None)
            if cb is not None:
                breaker.add_metric([name], BREAKER_STATE.get(cb.state, 0))
                fallback.add_metric([name], model.engine.fallback_batches)
                accel.add_metric([name], model.engine.primary_batches)
                accel_errors.add_metric([name], model.engine.primary_errors)
                switch.add_metric([name], model.engine.last_switch_s)
            bp = getattr(model.engine, "pool", None)
            if bp is not None:
                st = bp.stats()
                for k, fam in pool.items():
                    fam.add_metric([name], float(st[k]))
        for name in list(self.registry.errors):
            errors.add_metric([name], 1.0)
        yield from (depth, backlog, loaded, ready, providers, breaker, fallback, accel, accel_errors, switch,
                    *pool.values(), errors)
