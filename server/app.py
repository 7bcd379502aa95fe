"""The server: gRPC services, health, reflection, model loading, graceful drain.

`create_server(settings)` returns a started server and its port, so tests bind port 0. Models
load in the background after the port is open: health answers from the first second, with
NOT_SERVING until each model is warm.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .export import ensure_default_model
from .fallback import FallbackEngine
from .metrics import Metrics
from .registry import Registry
from .security import ADMIN_OFF, ApiKeyInterceptor, server_credentials
from .servicers import (AdminServicer, Core, EmbedderServicer, ModelsServicer, RerankerServicer, ServerState,
                        add_to_server)
from .errors import FailedPrecondition, NotFound, Unavailable
from .settings import Settings
from .v1 import ember_pb2 as pb

log = logging.getLogger(__name__)

SERVICES = {name: pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Embedder", "Reranker", "Models")}
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_SEND_BYTES = 256 * 1024 * 1024  # responses: 1024 inputs × 8192 float32 dimensions fit


class DrainingHealth(health.aio.HealthServicer):
    """The standard health service, except that Watch streams end when the server drains.

    A Watch stream never ends by itself; left open it would hold the drain for its whole grace
    period and then be cancelled. On drain each watcher is sent NOT_SERVING, then its stream ends
    with OK. (Statuses live in the parent's `_server_status`; change notification is our own.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._cond: asyncio.Condition | None = None
        self._ending = False

    def _changes(self) -> asyncio.Condition:
        if self._cond is None:  # created on the server's loop, at first use
            self._cond = asyncio.Condition()
        return self._cond

    async def _set(self, service: str, status) -> None:
        async with self._changes():
            self._server_status[service] = status
            self._changes().notify_all()

    async def Watch(self, request, context):
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        last = None
        while True:
            async with self._changes():
                while self._server_status.get(request.service, unknown) == last and not self._ending:
                    await self._changes().wait()
                status, ending = self._server_status.get(request.service, unknown), self._ending
            if status != last:  # written outside the lock: a slow watcher holds up no one
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if ending:
                return

    def status(self, service: str = ""):
        """The status registered for `service`, NOT_SERVING where none is (the HTTP /health)."""
        return self._server_status.get(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def List(self, request, context):
        """Every registered status: the server (""), each service, each model (`model/<name>`)."""
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()})

    async def end_watches(self) -> None:
        await self.enter_graceful_shutdown()  # every status NOT_SERVING
        async with self._changes():
            self._ending = True
            self._changes().notify_all()


def _check_bindable(host: str, port: int) -> None:
    """Raise OSError when `host:port` cannot be listened on (in use, not this machine's address)."""
    if port == 0:
        return
    import socket

    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host.strip("[]") or None, port, 0,
                                                              socket.SOCK_STREAM, 0, socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listener does
            sock.bind(sockaddr)


class StartupError(Exception):
    """The server cannot start with these settings (a port in use, …): one line for the user."""


def model_health_name(name: str) -> str:
    return f"model/{name}"


class RefusingServicer:
    """Answers every method of a service with one status, without looking at the request (the
    Admin service when the server has no admin keys)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code, self.message = code, message

    def __getattr__(self, method: str):
        async def refuse(_request, context):
            await context.abort(self.code, self.message)

        return refuse


class EmberServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = ServerState()
        self.registry = Registry(settings)
        self.core = Core(self.registry, settings, self.state)
        self.health = DrainingHealth()
        keys = settings.all_api_keys()
        # Without any key, data or admin, there is nothing to check: no interceptor, so no Python
        # call per RPC before its handler (the Admin service then refuses by itself, below).
        any_keys = bool(keys or settings.admin_api_keys)
        self.server = grpc.aio.server(
            interceptors=[ApiKeyInterceptor(keys, settings.admin_api_keys)] if any_keys else [],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),
            ])
        self.metrics = Metrics(self.registry) if settings.metrics else None
        self.http = None
        if settings.http:
            from .httpapi import HttpFrontend

            self.http = HttpFrontend(self)
        self.http_port = 0
        self.core.metrics = self.registry.metrics = self.metrics
        self.metrics_port = 0
        add_to_server(EmbedderServicer(self.core), "Embedder", self.server)
        add_to_server(RerankerServicer(self.core), "Reranker", self.server)
        add_to_server(ModelsServicer(self.core), "Models", self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            names = (*SERVICES.values(), ADMIN_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                     reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        if settings.admin_api_keys:
            add_to_server(AdminServicer(self), "Admin", self.server)
        else:
            add_to_server(RefusingServicer(grpc.StatusCode.PERMISSION_DENIED, ADMIN_OFF), "Admin", self.server)
        self._admin = asyncio.Lock()
        self.loaded = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._load_task: asyncio.Future | None = None
        self._loading_done = False
        self._hurry: asyncio.Event | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind the ports and start serving; StartupError (one line, naming the setting) when a port
        cannot be had. Models load in the background."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        address = f"{s.host}:{s.port}"
        creds = server_credentials(s)
        try:
            # Checked first: gRPC would also log its own error line for a port in use.
            _check_bindable(s.host, s.port)
            self.port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        except (RuntimeError, OSError):
            self.port = 0
        if self.port == 0:
            await self._abandon_start(f"cannot listen for gRPC on {address}: the port is in use (another server?) or "
                                      "the address is not one of this machine's; choose another with --port / "
                                      "EMBER_PORT (0 = any free port) or --host / EMBER_HOST")
        if self.metrics is not None:
            try:
                self.metrics_port = self.metrics.serve(s.host, s.metrics_port)
            except OSError as e:
                reason = getattr(e.__cause__, "strerror", None) or e  # metrics.serve wraps the OSError
                await self._abandon_start(
                    f"cannot serve metrics on {s.host}:{s.metrics_port}: {reason}; a second server on this host "
                    "needs a port of its own: --metrics-port / EMBER_METRICS_PORT (0 = any free port), or "
                    "--no-metrics")
        if self.http is not None:
            try:
                _check_bindable(s.host, s.http_port)
                self.http_port = await self.http.start(s.host, s.http_port)
            except OSError as e:
                await self._abandon_start(f"cannot serve HTTP on {s.host}:{s.http_port}: {e.strerror or e}; give it "
                                          "another port with --http-port / EMBER_HTTP_PORT (0 = any free port), or "
                                          "--no-http")
        for name in ("", *SERVICES.values(), *self._admin_health()):
            await self.health.set(name, NOT_SERVING)
        await self.server.start()
        log.info("ember listening on %s:%d (%s%s)", s.host, self.port,
                 "mutual TLS" if s.tls_client_ca else "TLS" if creds else "plaintext",
                 ", API keys required" if s.all_api_keys() else "")
        log.info("settings: %s", s.describe())
        if self.metrics is not None:
            log.info("metrics on http://%s:%d/metrics", s.host, self.metrics_port)
        if self.http is not None:
            log.info("HTTP APIs on http://%s:%d (OpenAI /v1/embeddings, Cohere /v1/rerank, TEI /embed; /docs)",
                     s.host, self.http_port)
        self.registry.on_change = self._schedule_health_update
        self._load_task = asyncio.ensure_future(self._load())
        return self.port

    async def _load(self) -> None:
        try:
            await self._loop.run_in_executor(None, self._load_models)
        finally:
            self._loading_done = True
            await self._update_health()
            self.loaded.set()

    # ---- model loading (a worker thread) ----------------------------------------------------
    def _models_dir(self) -> Path | None:
        if self.settings.models_dir:
            return Path(self.settings.models_dir)
        if self.settings.model_configs:  # the TOML file says where each model is
            return None
        return ensure_default_model(self.settings.cache_path)

    def _load_models(self) -> None:
        try:
            models_dir = self._models_dir()
        except Exception as e:
            log.error("no models to serve: %s", e)
            self.registry.errors["*"] = str(e)
            return
        self.registry.models_dir = models_dir
        for name, path in self.registry.discover_named(models_dir).items():
            if self.state.draining:
                return
            model = self.registry.load(path, name)
            if model is not None:
                try:
                    self.registry.warm_up(model)
                except Exception as e:
                    log.error("model %s failed its warm-up: %s", model.name, e)
                    self.registry.errors[model.name] = f"warm-up failed: {e}"
        if not self.registry.models:
            log.error("no model could be loaded from %s", models_dir)

    # ---- health -----------------------------------------------------------------------------
    def _schedule_health_update(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._update_health(), self._loop)

    async def _update_health(self) -> None:
        if self.state.draining:
            return
        reg = self.registry
        for name, model in list(reg.models.items()):
            await self.health.set(model_health_name(name), SERVING if model.ready else NOT_SERVING)
            if isinstance(model.engine, FallbackEngine):
                # The model keeps serving (on CPU) while degraded; this status tells the degradation.
                await self.health.set(model_health_name(name) + "/accelerator",
                                      NOT_SERVING if model.engine.degraded else SERVING)
        for name in list(reg.errors):
            if name != "*" and name not in reg.models:
                await self.health.set(model_health_name(name), NOT_SERVING)

        def ready(task: str) -> bool:
            name = reg.default_name(task)
            return bool(name) and reg.models[name].ready

        await self.health.set(SERVICES["Embedder"], SERVING if ready("embed") else NOT_SERVING)
        await self.health.set(SERVICES["Reranker"], SERVING if ready("rerank") else NOT_SERVING)
        await self.health.set(SERVICES["Models"], SERVING)
        for name in self._admin_health():  # Admin answers once the first load is done
            await self.health.set(name, SERVING if self._loading_done else NOT_SERVING)
        await self.health.set("", SERVING if self._loading_done and reg.ready() else NOT_SERVING)

    async def _abandon_start(self, message: str) -> None:
        """A port could not be had: let go of what start() already holds, then StartupError."""
        await self.server.stop(None)
        if self.metrics is not None:
            self.metrics.stop()  # nothing to stop when it had not started
        raise StartupError(message)

    def _admin_health(self) -> tuple[str, ...]:
        """Admin has a health entry only where it is on (admin keys set); where it is off, Check
        answers NOT_FOUND for it, as for any service the server does not offer."""
        return (ADMIN_SERVICE,) if self.settings.admin_api_keys else ()

    # ---- live model management (Admin RPCs, SIGHUP) -----------------------------------------
    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _bring_up(self, name: str, path: Path, register: bool):
        """Load and warm a model off the event loop; a refused model raises with the reason."""
        if register:
            await self.health.set(model_health_name(name), NOT_SERVING)
        model = await self._blocking(lambda: self.registry.load(path, name, register=register))
        if model is None:
            raise FailedPrecondition(f"model {name!r} was refused: {self.registry.errors.get(name, 'unknown error')}")
        try:
            await self._blocking(self.registry.warm_up, model)
        except Exception as e:
            if register:
                self.registry.remove(name)
            self.registry.errors[name] = f"warm-up failed: {e}"
            raise FailedPrecondition(f"model {name!r} failed its warm-up: {e}") from e
        return model

    async def load_model(self, name: str):
        async with self._admin:
            self._loaded_yet()
            if name in self.registry.models:
                raise FailedPrecondition(f"model {name!r} is already loaded; use ReloadModel")
            return await self._bring_up(name, self.registry.path_of(name), register=True)

    async def reload_model(self, name: str):
        async with self._admin:
            self._loaded_yet()
            old = self.registry.models.get(name)
            if old is None:
                raise NotFound(f"model {name!r} is not loaded; use LoadModel")
            new = await self._bring_up(name, old.path, register=False)  # the old one serves meanwhile
            self.registry.swap_in(new)
            asyncio.ensure_future(self._blocking(self.registry.retire, old, self.settings.drain_seconds))
            log.info("model %s reloaded from %s", name, old.path)
            return new

    async def unload_model(self, name: str) -> None:
        async with self._admin:
            self._loaded_yet()
            old = self.registry.remove(name)
            if old is None:
                raise NotFound(f"model {name!r} is not loaded")
            await self.health.set(model_health_name(name), NOT_SERVING)
            await self._blocking(self.registry.retire, old, self.settings.drain_seconds)
            log.info("model %s unloaded", name)

    async def rescan(self) -> dict:
        """Load new model directories, reload changed ones, unload those gone (SIGHUP, Admin/Rescan)."""
        from .manifest import read_manifest

        out: dict = {"loaded": [], "reloaded": [], "unloaded": [], "refused": {}}
        self._loaded_yet()
        on_disk = self.registry.discover_named(self.registry.models_dir)
        for name, path in sorted(on_disk.items()):
            try:
                if name not in self.registry.models:
                    await self.load_model(name)
                    out["loaded"].append(name)
                elif _changed(read_manifest(path, verify=False), self.registry.models[name].manifest):
                    await self.reload_model(name)
                    out["reloaded"].append(name)
            except Exception as e:  # one bad model does not stop the rest
                out["refused"][name] = getattr(e, "message", None) or str(e)
        for name in sorted(set(self.registry.models) - set(on_disk)):
            await self.unload_model(name)
            out["unloaded"].append(name)
        log.info("rescan: %s", out)
        return out

    def _loaded_yet(self) -> None:
        if not self._loading_done:
            raise Unavailable("the server is still loading its models; retry shortly")

    # ---- shutdown ---------------------------------------------------------------------------
    async def drain(self, grace: float | None = None, delay: float = 0.0) -> None:
        """Graceful stop (SIGTERM runs it with --drain-delay-seconds as `delay`).

        1. Health goes NOT_SERVING at once (Check and Watch, every service), and for `delay`
           seconds the server goes on serving as before, new connections included, so that
           probes, load balancers and clients see it leave before anything is refused (a second
           signal, `hurry()`, cuts the delay short).
        2. New calls are refused UNAVAILABLE; Watch streams end; every open Embed/Rerank stream
           stops reading, answers each message it read, and ends UNAVAILABLE (`servicers.DRAINED`),
           which tells its client to reconnect and send the rest again.
        3. The listener closes; unary calls in flight finish, within `grace` seconds.
        """
        grace = self.settings.drain_seconds if grace is None else grace
        log.info("draining: health NOT_SERVING, serving on for %.1fs, then in-flight work has %.1fs", delay, grace)
        await self.health.enter_graceful_shutdown()
        if delay > 0:
            try:
                await asyncio.wait_for(self._hurried().wait(), delay)
            except asyncio.TimeoutError:
                pass
        self.state.draining = True
        await self.health.end_watches()
        streams = self.core.stop_streams()
        if streams:
            log.info("ending %d open stream(s) after their answers", streams)
        stopping = [self.server.stop(grace)]
        if self.http is not None:
            stopping.append(self.http.stop())
        await asyncio.gather(*stopping)
        self.registry.stop()
        self.core.tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics is not None:
            self.metrics.stop()
        log.info("stopped")

    def _hurried(self) -> asyncio.Event:
        if self._hurry is None:
            self._hurry = asyncio.Event()
        return self._hurry

    def hurry(self) -> None:
        """A second stop signal: skip what is left of the drain delay."""
        self._hurried().set()


async def create_server(settings: Settings) -> tuple[EmberServer, int]:
    """A started server and the port it listens on (settings.port 0 = any free port)."""
    server = EmberServer(settings)
    port = await server.start()
    return server, port


def _changed(on_disk, serving) -> bool:
    """Whether a model directory holds another model than the one serving: other files, or int8
    ranges measured since (`ember calibrate` rewrites only ember.json)."""
    return on_disk.files != serving.files or on_disk.quantization_ranges != serving.quantization_ranges
