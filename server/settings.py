"""One frozen settings object. Every field has a CLI flag and an `EMBER_*` environment twin.

Precedence: CLI flag > environment > default. Invalid values stop start-up with a message that
names the setting.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

KNOWN_PROVIDERS = ("tensorrt", "cuda", "cpu")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ember"


@dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 = any free port)"})
    models_dir: str = field(
        default="", metadata={"help": "directory of exported models; empty = the embedded default model"}
    )
    models: tuple[str, ...] = field(
        default=(), metadata={"help": "comma-separated model names to load from models-dir (empty = all)"}
    )
    default_embed_model: str = field(default="", metadata={"help": "default model for Embed (empty = automatic)"})
    default_rerank_model: str = field(default="", metadata={"help": "default model for Rerank (empty = automatic)"})
    providers: tuple[str, ...] = field(
        default=KNOWN_PROVIDERS, metadata={"help": "execution providers in priority order (tensorrt,cuda,cpu)"}
    )
    breaker_threshold: int = field(
        default=3, metadata={"help": "consecutive accelerator errors that open a model's circuit breaker"}
    )
    breaker_recovery_seconds: float = field(
        default=300.0, metadata={"help": "seconds on CPU before one trial batch goes back to the accelerator"}
    )
    cache_dir: str = field(
        default="", metadata={"help": "where the embedded default model is exported (empty = ~/.cache/ember)"}
    )
    max_inputs_per_request: int = field(default=1024, metadata={"help": "inputs per Embed / documents per Rerank"})
    max_batch_tokens: int = field(default=16384, metadata={"help": "padded tokens in one inference batch"})
    bulk_max_batch_tokens: int = field(
        default=512, metadata={"help": "padded tokens in one BULK batch (small: REALTIME waits at most one)"}
    )
    batch_overhead_tokens: int = field(
        default=32, metadata={"help": "fixed cost of one inference run, in tokens (trades batch size for padding)"}
    )
    max_wait_us: int = field(
        default=0, metadata={"help": "microseconds to wait for a fuller batch while the queue is short"}
    )
    max_batch_size: int = field(default=128, metadata={"help": "items in one inference batch"})
    max_queue_items: int = field(default=65536, metadata={"help": "items waiting for inference per model"})
    stream_max_in_flight: int = field(default=16, metadata={"help": "messages in flight per stream"})
    intra_op_threads: int = field(default=0, metadata={"help": "ONNX Runtime intra-op threads (0 = cores)"})
    inference_workers: int = field(
        default=1, metadata={"help": "inference threads per model sharing its session (1 suits a CPU: ORT "
                                     "already uses every core inside one run)"}
    )
    tokenizer_threads: int = field(default=2, metadata={"help": "threads that tokenize requests"})
    inline_tokenize_chars: int = field(
        default=2000, metadata={"help": "requests with fewer characters are tokenized on the event loop"}
    )
    inline_max_tokens: int = field(
        default=512, metadata={"help": "a REALTIME request of at most this many padded tokens that arrives while "
                                       "the server has nothing else to do runs on the event loop, skipping the "
                                       "queue's two thread hops (0 = never)"}
    )
    inline_idle_us: int = field(
        default=1000, metadata={"help": "the inline path needs the model to have been idle this long (a call "
                                        "arriving right after a run is likely one of a burst that should batch)"}
    )
    ort_spinning: bool = field(
        default=True, metadata={"help": "let ONNX Runtime's idle intra-op threads spin (faster ops, but they "
                                         "take CPU from the rest of the server)"}
    )
    drain_seconds: float = field(default=20.0, metadata={"help": "grace period for in-flight work on SIGTERM"})
    reflection: bool = field(default=True, metadata={"help": "enable gRPC server reflection"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"invalid setting {name} (--{name.replace('_', '-')} / {env_name(name)}): {why}")

        if not 0 <= self.port <= 65535:
            raise bad("port", f"{self.port} is not a port number")
        for name in ("max_inputs_per_request", "max_batch_tokens", "bulk_max_batch_tokens", "max_batch_size",
                     "max_queue_items", "stream_max_in_flight", "tokenizer_threads", "inference_workers"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("inline_tokenize_chars", "inline_max_tokens", "inline_idle_us"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.batch_overhead_tokens < 0 or self.max_wait_us < 0:
            raise bad("batch_overhead_tokens" if self.batch_overhead_tokens < 0 else "max_wait_us", "must be >= 0")
        if self.intra_op_threads < 0:
            raise bad("intra_op_threads", "must be >= 0")
        if self.breaker_threshold < 1:
            raise bad("breaker_threshold", "must be >= 1")
        if self.breaker_recovery_seconds < 0:
            raise bad("breaker_recovery_seconds", "must be >= 0")
        if self.drain_seconds < 0:
            raise bad("drain_seconds", "must be >= 0")
        unknown = [p for p in self.providers if p not in KNOWN_PROVIDERS]
        if unknown or not self.providers:
            raise bad("providers", f"{','.join(unknown) or 'empty'}; choose from {','.join(KNOWN_PROVIDERS)}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise bad("log_level", f"{self.log_level!r}")
        if self.models_dir and not Path(self.models_dir).is_dir():
            raise bad("models_dir", f"{self.models_dir} is not a directory")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


def env_name(field_name: str) -> str:
    return "EMBER_" + field_name.upper()


def _parse(f: dataclasses.Field, raw: str):
    kind = type(f.default)
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"invalid setting {f.name} ({env_name(f.name)}): {raw!r} is not a boolean")
    if kind is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"invalid setting {f.name}: {raw!r} is not a {kind.__name__}") from None


def from_sources(cli: dict[str, object] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from CLI values (already parsed, None = not given) over the environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        if cli and cli.get(f.name) is not None:
            raw = cli[f.name]
            values[f.name] = _parse(f, raw) if isinstance(raw, str) and not isinstance(f.default, str) else raw
        elif env_name(f.name) in environ:
            values[f.name] = _parse(f, environ[env_name(f.name)])
    return Settings(**values)
