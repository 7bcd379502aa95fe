"""`ember serve` and `ember export`."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys

from . import settings as settings_mod


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the gRPC server",
                       description="Run the gRPC server. Every flag has an EMBER_* environment twin.")
    for f in dataclasses.fields(settings_mod.Settings):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        help_text = f"{f.metadata.get('help', '')} [env {settings_mod.env_name(f.name)}; default: {default!r}]"
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_text,
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
    p.add_argument("--optimize", default="", choices=["", "O1", "O2", "O3", "O4"])
    p.add_argument("--matryoshka-dims", default="", help="comma-separated allowed Matryoshka dimensions")
    p.add_argument("--isa", default="", help="int8: instruction set of the serving machine "
                                             "(amx, vnni, avx512, avx2, arm64, generic; default: this machine's)")


async def _serve(settings: settings_mod.Settings) -> None:
    from .app import create_server

    # The inference thread needs the GIL briefly between ONNX Runtime runs; with the default 5 ms
    # switch interval it can sit idle that long behind the event loop. 0.5 ms keeps ORT fed.
    sys.setswitchinterval(0.0005)
    server, port = await create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: rescan the models (load new, reload changed, unload removed), as Admin/Rescan does
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_rescan(server)))
    await stop.wait()
    await server.drain()


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
    args = parser.parse_args(argv)

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
        asyncio.run(_serve(cfg))
        return 0
    if args.command == "export":
        from .export import ExportError, export_model

        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
        try:
            dims = tuple(int(d) for d in args.matryoshka_dims.split(",") if d.strip())
            m = export_model(args.src, args.out, args.task, dtype=args.dtype, optimize=args.optimize,
                             matryoshka_dimensions=dims, isa=args.isa, max_tokens=args.max_tokens)
        except (ExportError, ValueError) as e:
            print(f"ember export: {e}", file=sys.stderr)
            return 2
        print(f"exported {m.name}: family={m.family} task={m.task} dims={m.dimensions} pooling={m.pooling or '-'} "
              f"max_tokens={m.max_tokens} dtype={m.dtype} -> {args.out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
