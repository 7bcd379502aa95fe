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
from .security import ApiKeyInterceptor, server_credentials
from .servicers import Core, EmbedderServicer, ModelsServicer, RerankerServicer, ServerState, add_to_server
from .settings import Settings
from .v1 import ember_pb2 as pb

log = logging.getLogger(__name__)

SERVICES = {name: pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Embedder", "Reranker", "Models")}
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

    async def end_watches(self) -> None:
        await self.enter_graceful_shutdown()  # every status NOT_SERVING
        async with self._changes():
            self._ending = True
            self._changes().notify_all()


def model_health_name(name: str) -> str:
    return f"model/{name}"


class EmberServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = ServerState()
        self.registry = Registry(settings)
        self.core = Core(self.registry, settings, self.state)
        self.health = DrainingHealth()
        keys = settings.all_api_keys()
        self.server = grpc.aio.server(
            interceptors=[ApiKeyInterceptor(keys)] if keys else [],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),
            ])
        self.metrics = Metrics(self.registry) if settings.metrics else None
        self.core.metrics = self.registry.metrics = self.metrics
        self.metrics_port = 0
        add_to_server(EmbedderServicer(self.core), "Embedder", self.server)
        add_to_server(RerankerServicer(self.core), "Reranker", self.server)
        add_to_server(ModelsServicer(self.core), "Models", self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            names = (*SERVICES.values(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                     reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        self.loaded = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._load_task: asyncio.Future | None = None
        self._loading_done = False
        self.port = 0

    async def start(self) -> int:
        self._loop = asyncio.get_running_loop()
        address = f"{self.settings.host}:{self.settings.port}"
        creds = server_credentials(self.settings)
        self.port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {self.settings.host}:{self.settings.port}")
        for name in ("", *SERVICES.values()):
            await self.health.set(name, NOT_SERVING)
        await self.server.start()
        log.info("ember listening on %s:%d (%s%s)", self.settings.host, self.port,
                 "mutual TLS" if self.settings.tls_client_ca else "TLS" if creds else "plaintext",
                 ", API keys required" if self.settings.all_api_keys() else "")
        log.info("settings: %s", self.settings.describe())
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(self.settings.host, self.settings.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)
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
        configured = {mc.path: mc.name for mc in self.settings.model_configs if mc.path}
        for path in self.registry.discover(models_dir):
            if self.state.draining:
                return
            model = self.registry.load(path, configured.get(str(path), ""))
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
        await self.health.set("", SERVING if self._loading_done and reg.ready() else NOT_SERVING)

    # ---- shutdown ---------------------------------------------------------------------------
    async def drain(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING first, refuse new work, let in-flight work finish."""
        grace = self.settings.drain_seconds if grace is None else grace
        log.info("draining (grace %.1fs)", grace)
        self.state.draining = True
        await self.health.end_watches()
        await self.server.stop(grace)
        self.registry.stop()
        self.core.tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics is not None:
            self.metrics.stop()
        log.info("stopped")


async def create_server(settings: Settings) -> tuple[EmberServer, int]:
    """A started server and the port it listens on (settings.port 0 = any free port)."""
    server = EmberServer(settings)
    port = await server.start()
    return server, port
