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
MODEL_KEYS = ("path", "providers", "max_batch_tokens", "max_tokens", "dtype", "prompts")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One `[models.NAME]` table of the TOML file: where the model is and what to change for it."""

    name: str
    path: str = ""  # default: <models_dir>/<name>
    providers: tuple[str, ...] = ()  # default: the server's --providers
    max_batch_tokens: int = 0  # default: the server's --max-batch-tokens
    max_tokens: int = 0  # lower the exported limit (0 = keep it)
    dtype: str = ""  # if given, the exported model must have this dtype
    prompts: tuple[tuple[str, str], ...] = ()  # added to (or replacing) the exported prompts


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
        default=KNOWN_PROVIDERS, metadata={"help": "execution providers in priority order; the default takes those "
                                                   "this onnxruntime build has, quietly (one named here that is "
                                                   "missing is logged)"}
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
    device_id: int = field(default=0, metadata={"help": "CUDA device for the TensorRT and CUDA providers"})
    gpu_mem_limit_mb: int = field(default=0, metadata={"help": "CUDA provider memory arena limit (0 = no limit)"})
    cuda_arena_extend: str = field(
        default="same_as_requested", metadata={"help": "CUDA arena growth: same_as_requested or next_power_of_two"}
    )
    trt_fp16: bool = field(default=True, metadata={"help": "let TensorRT build fp16 kernels"})
    trt_cache_dir: str = field(
        default="", metadata={"help": "TensorRT engine and timing caches (empty = <cache dir>/tensorrt)"}
    )
    gpu_timeout_ms: int = field(
        default=30000, metadata={"help": "an accelerator batch running longer is stopped, counted as an error "
                                         "and retried on the CPU (0 = no limit)"}
    )
    buffer_pool_mb: int = field(
        default=256, metadata={"help": "host buffers kept for reuse per model (page-locked when CUDA is "
                                       "present; 0 = no pool, no IO binding)"}
    )
    max_inputs_per_request: int = field(default=1024, metadata={"help": "inputs per Embed / documents per Rerank"})
    max_batch_tokens: int = field(default=16384, metadata={"help": "padded tokens in one inference batch"})
    bulk_max_batch_tokens: int = field(
        default=256, metadata={"help": "padded tokens in one BULK batch while REALTIME requests are about "
                                       "(small: a REALTIME request waits at most one). Models with lanes on the "
                                       "CPU run REALTIME batches beside BULK ones and keep the solo size"}
    )
    bulk_solo_batch_tokens: int = field(
        default=1024, metadata={"help": "padded tokens in one BULK batch when no REALTIME request came in the "
                                        "last realtime_recent_ms (less per-run overhead; 0 = bulk_max_batch_tokens)"}
    )
    realtime_recent_ms: int = field(
        default=1000, metadata={"help": "REALTIME requests count as about for this long after the last one"}
    )
    batch_overhead_tokens: int = field(
        default=32, metadata={"help": "fixed cost of one inference run, in tokens (trades batch size for padding)"}
    )
    max_wait_us: int = field(
        default=0, metadata={"help": "microseconds to wait for a fuller batch while the queue is short"}
    )
    max_batch_size: int = field(default=128, metadata={"help": "items in one inference batch"})
    max_queue_items: int = field(default=65536, metadata={"help": "items waiting for inference per model"})
    default_deadline_seconds: float = field(
        default=30.0, metadata={"help": "the deadline ember assumes for a request that sets none: its place in "
                                        "the queue's deadline order, and the wait it is admitted against (a "
                                        "request the backlog would keep longer is refused RESOURCE_EXHAUSTED at "
                                        "once; 0 = no bound)"}
    )
    stream_max_in_flight: int = field(default=16, metadata={"help": "messages in flight per stream"})
    intra_op_threads: int = field(default=0, metadata={"help": "ONNX Runtime intra-op threads (0 = cores)"})
    inference_workers: int = field(
        default=0, metadata={"help": "batches a model runs at once (0 = auto: 2 for a model on the CPU with 2+ "
                                     "intra-op threads, else 1). On the CPU each worker runs on a lane, an ONNX "
                                     "Runtime session with intra_op_threads / workers threads (one shared "
                                     "session when that is 1), built once the model is ready; a request that "
                                     "has the model to itself runs on the main session with all of them. With "
                                     "lanes, BULK batches run on as many workers again at a lower OS priority, "
                                     "so REALTIME ones start at once beside them. Each session holds its own "
                                     "repacked copy of the weight matrices (1 = one session only); auto builds "
                                     "no lanes when those copies and their batches' working memory would not fit "
                                     "in the memory available (a container's limit included)"}
    )
    tokenizer_threads: int = field(default=2, metadata={"help": "threads that tokenize requests"})
    inline_tokenize_chars: int = field(
        default=2000, metadata={"help": "requests with fewer characters are tokenized on the event loop"}
    )
    fast_tokenizer: bool = field(
        default=True, metadata={"help": "tokenize texts for BERT-family models (a BertNormalizer, "
                                        "BertPreTokenizer and WordPiece tokenizer.json) with ember's compiled "
                                        "WordPiece, which gives HF tokenizers' ids in a twelfth to a quarter of the "
                                        "time (benchmarks/tokenizer_cost.py); other "
                                        "models and texts always use HF tokenizers. Checked against HF on probe "
                                        "texts at load. --no-fast-tokenizer sends every text to HF"}
    )
    inline_max_tokens: int = field(
        default=512, metadata={"help": "a REALTIME request of at most this many padded tokens that arrives while "
                                       "the server has nothing else to do runs on the event loop, skipping the "
                                       "queue's two thread hops (0 = never)"}
    )
    inline_idle_us: int = field(
        default=1000, metadata={"help": "the inline path needs the model to have been idle this long (a call "
                                        "arriving right after a run is likely one of a burst that should batch), "
                                        "unless calls have come one at a time lately (--inline-alone-ms)"}
    )
    inline_alone_ms: int = field(
        default=100, metadata={"help": "a lone call may take the inline path right after a run when no two calls "
                                       "were in flight together for this long: a client calling in a loop, whose "
                                       "next call comes a round trip after the last run, sooner than "
                                       "--inline-idle-us on a fast machine (0 = always wait for --inline-idle-us)"}
    )
    ort_spinning: bool = field(
        default=True, metadata={"help": "let ONNX Runtime's idle intra-op threads spin (faster ops, but they "
                                         "take CPU from the rest of the server, and for tens of ms after each "
                                         "run from other processes on the machine: "
                                         "benchmarks/RESULTS.md)"}
    )
    ort_spin_after_run: bool = field(
        default=True, metadata={"help": "with --ort-spinning, let the threads go on spinning for tens of ms after "
                                        "a run, as ONNX Runtime does by default. --no-ort-spin-after-run stops "
                                        "them when a run ends: a quarter less CPU per call back to back and "
                                        "two thirds less for a call after an idle stretch (for CPU quotas), but "
                                        "that call is ~3 ms slower (measured 2026-11-23)"}
    )
    shared_cpu_arena: bool = field(
        default=True, metadata={"help": "one ONNX Runtime CPU memory arena for every session of the process "
                                        "(the lanes, the main session, every model) instead of one each. An "
                                        "arena keeps, after a run, the working memory the run needed, several "
                                        "times a small model's weights for a batch of long texts: shared, the "
                                        "process keeps one set for the runs that can be in progress at once. "
                                        "--no-shared-cpu-arena gives each session its own, freed when its model "
                                        "is unloaded"}
    )
    pin_threads: str = field(
        default="auto", metadata={"help": "auto, on or off: pin a CPU model's main session, which runs a lone "
                                          "call, to cores: each ONNX Runtime pool thread to a core of its own, and "
                                          "the event-loop thread to the first core while it runs an inline call. "
                                          "auto pins when this process may use exactly as many cores as the "
                                          "session has threads (a 2-core VM, a pod with exclusive cores); on, "
                                          "whenever it may use that many. On the 2-core benchmark machine a text "
                                          "after an idle stretch took ~2 ms less (measured 2026-11-23)"}
    )
    http: bool = field(
        default=True, metadata={"help": "serve the HTTP/JSON APIs (OpenAI /v1/embeddings, Cohere /v1/rerank, "
                                        "text-embeddings-inference /embed, /rerank, /tokenize, /info; /health, "
                                        "/docs) beside gRPC, on the same models, limits and keys"}
    )
    http_port: int = field(default=8080, metadata={"help": "port of the HTTP APIs (0 = any free port)"})
    metrics: bool = field(default=True, metadata={"help": "serve Prometheus metrics over HTTP"})
    metrics_port: int = field(default=9464, metadata={"help": "port of the /metrics endpoint (0 = any free port)"})
    log_format: str = field(default="text", metadata={"help": "text or json (one JSON object per line)"})
    api_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "comma-separated API keys; every RPC but health and reflection needs "
                                      "'authorization: Bearer <key>' (prefer EMBER_API_KEYS or --api-keys-file: "
                                      "flags show in the process list)"}
    )
    admin_api_keys: tuple[str, ...] = field(
        default=(), metadata={"help": "comma-separated keys for the Admin service (load/reload/unload models); "
                                      "without any, Admin RPCs are refused"}
    )
    api_keys_file: str = field(default="", metadata={"help": "file with one API key per line (# comments)"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain: serve TLS (with --tls-key)"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(
        default="", metadata={"help": "PEM CA bundle: require client certificates signed by it (mutual TLS)"}
    )
    max_message_bytes: int = field(default=16 << 20, metadata={"help": "largest request message accepted"})
    max_input_chars: int = field(
        default=400_000, metadata={"help": "characters in one input, document or query (32k-token inputs fit)"}
    )
    max_request_chars: int = field(default=4_000_000, metadata={"help": "characters in one request, all inputs"})
    max_documents_per_request: int = field(default=1024, metadata={"help": "documents in one Rerank request"})
    cache_bytes: int = field(
        default=0, metadata={"help": "embedding cache budget in bytes (0 = no cache); LRU with a TTL"}
    )
    cache_ttl_seconds: float = field(default=3600.0, metadata={"help": "how long a cached embedding lives"})
    drain_seconds: float = field(
        default=20.0, metadata={"help": "on SIGTERM, after the drain delay: seconds in-flight calls and open "
                                        "streams have to finish before they are cancelled"}
    )
    drain_delay_seconds: float = field(
        default=5.0, metadata={"help": "on SIGTERM: seconds health answers NOT_SERVING while the server still "
                                       "serves everything, so probes and load balancers drop it before it refuses "
                                       "a call (one readiness period of deploy/kubernetes; a second signal skips "
                                       "the rest; Ctrl-C does not wait)"}
    )
    reflection: bool = field(default=True, metadata={"help": "enable gRPC server reflection"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    config: str = field(
        default="", metadata={"help": "TOML file: any of these settings, plus [models.NAME] tables (path, "
                                      "providers, max_batch_tokens, max_tokens, dtype, prompts); flags and "
                                      "EMBER_* variables override it"}
    )
    model_configs: tuple[ModelConfig, ...] = field(default=(), metadata={"cli": False})

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"invalid setting {name} (--{name.replace('_', '-')} / {env_name(name)}): {why}")

        if not 0 <= self.port <= 65535:
            raise bad("port", f"{self.port} is not a port number")
        for name in ("max_inputs_per_request", "max_batch_tokens", "bulk_max_batch_tokens", "max_batch_size",
                     "max_queue_items", "stream_max_in_flight", "tokenizer_threads",
                     "max_message_bytes", "max_input_chars", "max_request_chars", "max_documents_per_request"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("inline_tokenize_chars", "inline_max_tokens", "inline_idle_us", "inline_alone_ms",
                     "bulk_solo_batch_tokens", "realtime_recent_ms"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.batch_overhead_tokens < 0 or self.max_wait_us < 0:
            raise bad("batch_overhead_tokens" if self.batch_overhead_tokens < 0 else "max_wait_us", "must be >= 0")
        if self.intra_op_threads < 0 or self.inference_workers < 0:
            raise bad("intra_op_threads" if self.intra_op_threads < 0 else "inference_workers", "must be >= 0")
        for name in ("device_id", "gpu_mem_limit_mb", "gpu_timeout_ms", "buffer_pool_mb"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.cuda_arena_extend not in ("same_as_requested", "next_power_of_two"):
            raise bad("cuda_arena_extend", f"{self.cuda_arena_extend!r}; choose same_as_requested or next_power_of_two")
        if self.breaker_threshold < 1:
            raise bad("breaker_threshold", "must be >= 1")
        if self.breaker_recovery_seconds < 0:
            raise bad("breaker_recovery_seconds", "must be >= 0")
        for name in ("drain_seconds", "drain_delay_seconds", "default_deadline_seconds"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        unknown = [p for p in self.providers if p not in KNOWN_PROVIDERS]
        if unknown or not self.providers:
            raise bad("providers", f"{','.join(unknown) or 'empty'}; choose from {','.join(KNOWN_PROVIDERS)}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise bad("log_level", f"{self.log_level!r}")
        if not 0 <= self.http_port <= 65535:
            raise bad("http_port", f"{self.http_port} is not a port number")
        if not 0 <= self.metrics_port <= 65535:
            raise bad("metrics_port", f"{self.metrics_port} is not a port number")
        if self.pin_threads not in ("auto", "on", "off"):
            raise bad("pin_threads", f"{self.pin_threads!r}; choose auto, on or off")
        if self.log_format not in ("text", "json"):
            raise bad("log_format", f"{self.log_format!r}; choose text or json")
        if self.cache_bytes < 0 or self.cache_ttl_seconds <= 0:
            raise bad("cache_bytes" if self.cache_bytes < 0 else "cache_ttl_seconds", "must be positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise bad("tls_cert" if not self.tls_cert else "tls_key", "TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise bad("tls_client_ca", "mutual TLS needs --tls-cert and --tls-key too")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys_file"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise bad(name, f"{getattr(self, name)} is not a readable file")
        if self.tls_cert:  # checked here: gRPC would only log that it could not use them, and not listen
            import ssl

            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
            except (ssl.SSLError, OSError) as e:
                raise bad("tls_cert", f"{self.tls_cert} and {self.tls_key} are not a PEM certificate chain and its "
                                      f"private key ({getattr(e, 'reason', None) or e})") from None
            if self.tls_client_ca:
                try:
                    ssl.create_default_context(cafile=self.tls_client_ca)
                except (ssl.SSLError, OSError) as e:
                    raise bad("tls_client_ca", f"{self.tls_client_ca} holds no PEM CA certificate ({e})") from None
        for name in ("api_keys", "admin_api_keys"):
            if any(not k or any(c.isspace() for c in k) for k in getattr(self, name)):
                raise bad(name, "keys must be non-empty and contain no spaces")
        for mc in self.model_configs:
            where = f"models.{mc.name}"
            unknown = [p for p in mc.providers if p not in KNOWN_PROVIDERS]
            if unknown:
                raise bad(f"{where}.providers", f"{','.join(unknown)}; choose from {','.join(KNOWN_PROVIDERS)}")
            if mc.max_batch_tokens < 0 or mc.max_tokens < 0:
                raise bad(f"{where}.max_batch_tokens" if mc.max_batch_tokens < 0 else f"{where}.max_tokens",
                          "must be >= 0")
            if mc.dtype and mc.dtype not in ("fp32", "fp16", "bf16", "int8"):
                raise bad(f"{where}.dtype", f"{mc.dtype!r} is not fp32, fp16, bf16 or int8")
            if mc.path and not Path(mc.path).is_dir():
                raise bad(f"{where}.path", f"{mc.path} is not a directory")
        if self.models_dir and not Path(self.models_dir).is_dir():
            raise bad("models_dir", f"{self.models_dir} is not a directory")
        if self.models_dir and not os.access(self.models_dir, os.R_OK | os.X_OK):
            raise bad("models_dir", f"{self.models_dir} cannot be read by this user; fix its permissions")

    def describe(self) -> str:
        """Every setting as name=value for the start-up log, secrets masked."""
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("api_keys", "admin_api_keys"):
                v = f"<{len(v)} keys>"
            elif f.name == "model_configs":
                v = ",".join(mc.name for mc in v)
            elif isinstance(v, tuple):
                v = ",".join(v)
            parts.append(f"{f.name}={v}")
        return " ".join(parts)

    def all_api_keys(self) -> tuple[str, ...]:
        """The keys from --api-keys and --api-keys-file together."""
        keys = list(self.api_keys)
        if self.api_keys_file:
            for line in Path(self.api_keys_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(keys)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


def model_config(settings: "Settings", name: str) -> ModelConfig:
    """The [models.NAME] table for `name`, or an empty one (every field: the server's default)."""
    for mc in settings.model_configs:
        if mc.name == name:
            return mc
    return ModelConfig(name=name)


def env_name(field_name: str) -> str:
    return "EMBER_" + field_name.upper()


def _parse(f: dataclasses.Field, raw: str):
    kind = type(f.default)
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"invalid setting {f.name} (--{f.name.replace('_', '-')} / {env_name(f.name)}): {raw!r} is "
                         "not a boolean (true or false)")
    if kind is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    try:
        return kind(raw)
    except ValueError:
        what = {int: "a whole number", float: "a number"}.get(kind, f"a {kind.__name__}")
        raise ValueError(f"invalid setting {f.name} (--{f.name.replace('_', '-')} / {env_name(f.name)}): "
                         f"{raw!r} is not {what}") from None


def _from_toml(path: str) -> dict[str, object]:
    """Settings values from a TOML file (typed by TOML; checked against the fields)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"invalid setting config: cannot read {path}: {e}") from None
    fields = {f.name: f for f in dataclasses.fields(Settings) if f.metadata.get("cli", True)}
    values: dict[str, object] = {}
    for key, raw in data.items():
        if key == "models":
            continue
        f = fields.get(key.replace("-", "_"))
        if f is None or f.name == "config":
            raise ValueError(f"invalid setting {key} in {path}: not a setting (see `ember serve --help`)")
        kind = type(f.default)
        if kind is tuple and isinstance(raw, list):
            raw = tuple(str(x) for x in raw)
        elif kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
            raise ValueError(f"invalid setting {key} in {path}: {raw!r} is not a {kind.__name__}")
        values[f.name] = raw
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ValueError(f"invalid setting models in {path}: expected [models.NAME] tables")
    configs = []
    for name, table in models.items():
        if not isinstance(table, dict):
            raise ValueError(f"invalid setting models.{name} in {path}: expected a table")
        unknown = sorted(set(table) - set(MODEL_KEYS))
        if unknown:
            raise ValueError(f"invalid setting models.{name}.{unknown[0]} in {path}: "
                             f"not a model setting ({', '.join(MODEL_KEYS)})")
        kw: dict[str, object] = {"name": name}
        for key, raw in table.items():
            want = {"path": str, "dtype": str, "providers": list, "prompts": dict, "max_batch_tokens": int,
                    "max_tokens": int}[key]
            if not isinstance(raw, want) or isinstance(raw, bool):
                raise ValueError(f"invalid setting models.{name}.{key} in {path}: {raw!r} is not a {want.__name__}")
            if key == "path":
                raw = str((Path(path).parent / raw).resolve()) if not Path(raw).is_absolute() else raw
            elif key == "providers":
                raw = tuple(str(x) for x in raw)
            elif key == "prompts":
                raw = tuple((str(k), str(v)) for k, v in raw.items())
            kw[key] = raw
        configs.append(ModelConfig(**kw))
    values["model_configs"] = tuple(configs)
    return values


def from_sources(cli: dict[str, object] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from CLI values (already parsed, None = not given) over the environment, over
    the TOML file named by --config / EMBER_CONFIG, over the defaults."""
    environ = os.environ if environ is None else environ
    config = (cli or {}).get("config") or environ.get(env_name("config"), "")
    values: dict[str, object] = _from_toml(str(config)) if config else {}
    for f in dataclasses.fields(Settings):
        if not f.metadata.get("cli", True):
            continue
        if cli and cli.get(f.name) is not None:
            raw = cli[f.name]
            values[f.name] = _parse(f, raw) if isinstance(raw, str) and not isinstance(f.default, str) else raw
        elif env_name(f.name) in environ:
            values[f.name] = _parse(f, environ[env_name(f.name)])
    return Settings(**values)
