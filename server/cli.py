"""`ember serve`, `ember export`, and the bulk jobs `ember embed` / `ember rerank`."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from . import settings as settings_mod


# `ember serve --help`, by topic (every setting is in one group; a new one lands in the last).
SERVE_GROUPS = {
    "server": ("host", "port", "http", "http_port", "config", "reflection", "log_level", "log_format"),
    "models": ("models_dir", "models", "default_embed_model", "default_rerank_model", "cache_dir",
               "fast_tokenizer"),
    "limits and requests": ("max_inputs_per_request", "max_documents_per_request", "max_input_chars",
                            "max_request_chars", "max_message_bytes", "stream_max_in_flight"),
    "queue, deadlines and drain": ("max_queue_items", "default_deadline_seconds", "drain_delay_seconds",
                                   "drain_seconds"),
    "batching and priorities": ("max_batch_tokens", "max_batch_size", "batch_overhead_tokens", "max_wait_us",
                                "bulk_max_batch_tokens", "bulk_solo_batch_tokens", "realtime_recent_ms"),
    "CPU inference": ("intra_op_threads", "inference_workers", "tokenizer_threads", "pin_threads", "ort_spinning",
                      "ort_spin_after_run", "shared_cpu_arena", "inline_max_tokens", "inline_idle_us",
                      "inline_alone_ms", "inline_tokenize_chars"),
    "accelerators (GPU)": ("providers", "device_id", "gpu_mem_limit_mb", "cuda_arena_extend", "trt_fp16",
                           "trt_cache_dir", "gpu_timeout_ms", "buffer_pool_mb", "breaker_threshold",
                           "breaker_recovery_seconds"),
    "security": ("api_keys", "api_keys_file", "admin_api_keys", "tls_cert", "tls_key", "tls_client_ca"),
    "metrics and cache": ("metrics", "metrics_port", "cache_bytes", "cache_ttl_seconds"),
}


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC server", usage="ember serve [options]",
                       description="Run the gRPC server. Every flag has an EMBER_* environment twin, and every "
                                   "setting can be in the --config TOML file; flags win over variables, variables "
                                   "over the file.")
    groups = {title: p.add_argument_group(title) for title in SERVE_GROUPS}
    other = p.add_argument_group("other")
    group_of = {name: groups[title] for title, names in SERVE_GROUPS.items() for name in names}
    for f in dataclasses.fields(settings_mod.Settings):
        if not f.metadata.get("cli", True):
            continue
        g = group_of.get(f.name, other)
        flag = "--" + f.name.replace("_", "-")
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        help_text = f"{f.metadata.get('help', '')} [env {settings_mod.env_name(f.name)}; default: {default!r}]"
        if isinstance(f.default, bool):
            g.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            g.add_argument(flag, dest=f.name, default=None, help=help_text,
                           type=str if isinstance(f.default, (str, tuple)) else type(f.default))


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a Hugging Face model to an ember model directory")
    p.add_argument("src", help="a Hugging Face model directory (or hub id where the hub is reachable)")
    p.add_argument("out", help="the model directory to write (its name is the model's name)")
    p.add_argument("--task", required=True, choices=["embed", "rerank"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16", "int8"])
    p.add_argument("--max-tokens", type=int, default=0,
                   help="longest input in tokens (default: sentence-transformers' max_seq_length, else the "
                        "model's positions); e.g. up to 32768 for Qwen3-Embedding")
    p.add_argument("--optimize", default="", choices=["", "O1", "O2", "O3", "O4"],
                   help="fused attention, for long inputs: ONNX Runtime's transformer fusions for the encoders "
                        "(Optimum's level), GroupQueryAttention for the Qwen3 decoders (any level)")
    p.add_argument("--matryoshka-dims", default="", help="comma-separated allowed Matryoshka dimensions")
    p.add_argument("--isa", default="", help="int8: instruction set of the serving machine "
                                             "(amx, vnni, avx512, avx2, arm64, generic; default: this machine's)")
    p.add_argument("--weights", default="beside", choices=["beside", "graph"],
                   help="where the weights go: beside the graph in <graph>_data (default; ONNX Runtime maps "
                        "that file, so a model's sessions share it) or in the graph file (each session copies "
                        "them; under protobuf's 2 GB only)")


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="measure a model's int8/uint8 ranges on sample texts (ember.json)",
                       description="Embed sample texts with the model (here, on the CPU) and record the range of "
                                   "each component of its vectors, at every Matryoshka size, in the model's "
                                   "ember.json: what ENCODING_INT8 and UINT8 quantize into. Use texts like the "
                                   "ones you will embed; a serving process picks the ranges up on reload.")
    p.add_argument("model_dir", help="an exported model directory")
    p.add_argument("--texts", required=True, help="sample texts: JSONL, CSV/TSV, Parquet or plain text (at least 100)")
    p.add_argument("--text-field", default="text", help="field / column holding the text")
    p.add_argument("--limit", type=int, default=10000, help="use at most this many texts (default 10000)")
    p.add_argument("--input-type", default="document", choices=["query", "document"],
                   help="the model's prompt to use (default: document)")


def _bulk_common(p) -> None:
    p.add_argument("-o", "--output", required=True, help="where to write the result (its extension picks the format)")
    p.add_argument("--server", default="", help="host:port (or dns:///name:port, or a comma-separated list) of "
                                                 "a running server; default: an in-process server")
    p.add_argument("--models-dir", default="", help="in-process server: the models directory (default: the "
                                                     "embedded all-MiniLM-L6-v2)")
    p.add_argument("--config", default="", help="in-process server: a TOML settings file")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--api-key", default=os.environ.get("EMBER_API_KEY", ""), help="bearer key [env EMBER_API_KEY]")
    p.add_argument("--input-format", default="", choices=["", "jsonl", "csv", "tsv", "parquet", "txt"],
                   help="default: from the extension")
    p.add_argument("--text-field", default="text", help="field / column holding the text")
    p.add_argument("--id-field", default="id", help="field / column holding the id (default: id; a row without "
                                                     "one gets its row number)")
    p.add_argument("--retries", type=int, default=5, help="times to reconnect when the server goes away")
    p.add_argument("--streams", type=int, default=0,
                   help="streams at once, spread over the replicas --server names (a list, or every address of a "
                        "dns:/// name); default: one per replica")
    p.add_argument("--shard", default="",
                   help="INDEX/COUNT: take only the INDEX-th of COUNT equal, contiguous parts of the input (0-based) "
                        "and write OUTPUT with .shard-INDEX-of-COUNT before its extension; INDEX may be 'job' for "
                        "a Kubernetes Indexed Job's JOB_COMPLETION_INDEX. `ember merge OUTPUT` joins the parts")
    p.add_argument("--restart", action="store_true", help="discard a previous run's finished chunks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _embed_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed a JSONL/CSV/Parquet file into .npy or Parquet (resumable)",
                       description="Embed every text of a file through an ember server; an interrupted run "
                                   "resumes from its last finished chunk when run again.")
    p.add_argument("input", help="JSONL, CSV/TSV, Parquet or plain text (one text per line)")
    _bulk_common(p)
    p.add_argument("--input-type", default=None, choices=["query", "document"], help="the model's prompt to use")
    p.add_argument("--prompt-name", default="", help="a named prompt of the model")
    p.add_argument("--dimensions", type=int, default=0, help="Matryoshka truncation")
    p.add_argument("--encoding", default="float32",
                   choices=["float32", "float16", "bfloat16", "int8", "uint8", "binary", "ubinary"],
                   help="how vectors are sent and stored: float16; bfloat16 (stored as its uint16 bits); int8/uint8 "
                        "in the model's calibrated ranges (ember calibrate); binary/ubinary: sign bits, 8 per byte")
    p.add_argument("--batch-size", type=int, default=64, help="texts per stream message")
    p.add_argument("--chunk-size", type=int, default=1024, help="texts per saved chunk (multiple of --batch-size)")


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="join the shard outputs of a sharded `ember embed` into one file",
                       description="Join OUTPUT's shards (OUTPUT with .shard-INDEX-of-COUNT before its extension, "
                                   "as `ember embed --shard` writes them) into OUTPUT, in shard order. Every shard "
                                   "must be there.")
    p.add_argument("output", help="the output the shards were written for (.npy or .parquet)")


def _rerank_parser(sub) -> None:
    p = sub.add_parser("rerank", help="score every query of a file against a document file (resumable)",
                       description="Rerank all documents for each query. .npy output: the [queries, documents] "
                                   "score matrix; .parquet/.jsonl: the --top-n rows per query.")
    p.add_argument("queries", help="queries file (any input format)")
    p.add_argument("documents", help="documents file (any input format)")
    _bulk_common(p)
    p.add_argument("--query-field", default="text", help="field / column of the queries file holding the query")
    p.add_argument("--top-n", type=int, default=10, help="rows per query in .parquet/.jsonl output (0 = all)")
    p.add_argument("--raw-scores", action="store_true", help="logits instead of sigmoid scores")
    p.add_argument("--instruction", default="", help="task instruction (instruction-following rerankers)")
    p.add_argument("--docs-per-request", type=int, default=256, help="documents per Rerank call")
    p.add_argument("--concurrency", type=int, default=4, help="Rerank calls in flight")
    p.add_argument("--chunk-size", type=int, default=16, help="queries per saved chunk")


async def _serve(settings: settings_mod.Settings) -> None:
    from .app import create_server

    # The inference thread needs the GIL briefly between ONNX Runtime runs; with the default 5 ms
    # switch interval it can sit idle that long behind the event loop. 0.5 ms keeps ORT fed.
    sys.setswitchinterval(0.0005)
    server, port = await create_server(settings)
    stop = asyncio.Event()
    signals: list[int] = []
    loop = asyncio.get_running_loop()

    def on_stop(sig: int) -> None:
        signals.append(sig)
        if stop.is_set():  # a second signal: skip the rest of the drain delay
            server.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    # SIGHUP: rescan the models (load new, reload changed, unload removed), as Admin/Rescan does
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_rescan(server)))
    await stop.wait()
    # SIGTERM (Kubernetes, docker stop) keeps serving for the drain delay with health NOT_SERVING;
    # Ctrl-C (SIGINT) at a terminal has no load balancer to tell and stops at once.
    await server.drain(delay=settings.drain_delay_seconds if signals[0] == signal.SIGTERM else 0.0)


async def _rescan(server) -> None:
    try:
        await server.rescan()
    except Exception as e:  # a signal has no one to answer: log it
        logging.getLogger("ember").error("rescan on SIGHUP failed: %s", e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ember", description="gRPC embedding and reranking server")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _export_parser(sub)
    _embed_parser(sub)
    _rerank_parser(sub)
    _merge_parser(sub)
    _calibrate_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "calibrate":
        from . import bulk
        from .calibrate import CalibrationError, calibrate

        try:
            texts = bulk.read_records(Path(args.texts), text_field=args.text_field).texts[:args.limit]
            m = calibrate(Path(args.model_dir), texts, input_type=args.input_type)
        except (bulk.BulkError, CalibrationError) as e:
            print(f"ember calibrate: {e}", file=sys.stderr)
            return 2
        print(f"calibrated {m.name} on {len(texts)} texts: int8/uint8 ranges for dimensions "
              f"{', '.join(m.quantization_ranges)} written to {Path(args.model_dir) / 'ember.json'}")
        return 0

    if args.command == "merge":
        from . import bulk

        try:
            print(bulk.merge(args))
        except bulk.BulkError as e:
            print(f"ember merge: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command in ("embed", "rerank"):
        from . import bulk

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
        if "," in args.server:
            args.server = [a.strip() for a in args.server.split(",") if a.strip()]
        try:
            print(bulk.embed(args) if args.command == "embed" else bulk.rerank(args))
        except bulk.BulkError as e:
            print(f"ember {args.command}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"ember {args.command}: interrupted; finished chunks are kept, run the same command again "
                  "to resume", file=sys.stderr)
            return 130
        return 0

    if args.command == "serve":
        # ember's tokenizer threads are the parallelism; HF tokenizers' own thread pool would only
        # compete with ONNX Runtime for the cores.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            cfg = settings_mod.from_sources(vars(args))
        except ValueError as e:
            print(f"ember: {e}", file=sys.stderr)
            return 2
        from . import logs

        logs.setup(cfg.log_level, cfg.log_format)
        from .app import StartupError

        try:
            asyncio.run(_serve(cfg))
        except StartupError as e:
            print(f"ember: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "export":
        from .export import ExportError, export_model

        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
        try:
            dims = tuple(int(d) for d in args.matryoshka_dims.split(",") if d.strip())
            m = export_model(args.src, args.out, args.task, dtype=args.dtype, optimize=args.optimize,
                             matryoshka_dimensions=dims, isa=args.isa, max_tokens=args.max_tokens,
                             weights=args.weights)
        except (ExportError, ValueError) as e:
            print(f"ember export: {e}", file=sys.stderr)
            return 2
        print(f"exported {m.name}: family={m.family} task={m.task} dims={m.dimensions} pooling={m.pooling or '-'} "
              f"max_tokens={m.max_tokens} dtype={m.dtype} -> {args.out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
