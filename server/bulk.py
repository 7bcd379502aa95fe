"""`ember embed` and `ember rerank`: bulk jobs over files, streamed through a server, resumable.

    ember embed corpus.jsonl -o vectors.npy --server host:50051        # a running server
    ember embed corpus.parquet -o vectors.parquet --text-field body     # an in-process server
    ember rerank queries.jsonl docs.jsonl -o ranked.parquet --top-n 10

The input is cut into chunks of `--chunk-size` rows. Each finished chunk is saved at once under
`OUTPUT.partial/` (written to a temporary name, then renamed, so a chunk file is complete or
absent); an interrupted run (Ctrl-C, a killed process, a server gone for longer than the retries)
rerun with the same command skips the chunks already there and sends only the rest. When all
chunks are there they are assembled into OUTPUT and the partial directory is removed. The job's
identity (input file size and mtime, options) is recorded in `OUTPUT.partial/job.json`: a
partial directory left by a different job is refused instead of mixed in.

Empty texts (a blank line, an empty cell, a null, only whitespace) are skipped: they are not in
the output, and the summary counts them and names where they were. Any other bad input stops the
job with its file line (or row) and id, before or while it runs; it is never retried.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

FORMATS = ("jsonl", "csv", "tsv", "parquet", "txt")


class BulkError(Exception):
    """A problem with the job's input, output or options (exit status 2)."""


# ---- input ----------------------------------------------------------------------------------
@dataclass
class Records:
    ids: list[str]
    texts: list[str]
    where: list[str]  # each text's place in its file ("corpus.jsonl:28", "docs.parquet: row 7")
    skipped: list[str]  # the places of the empty texts left out

    def describe(self, i: int) -> str:
        return f"{self.where[i]} (id {self.ids[i]})"

    def skipped_note(self, what: str = "texts") -> str:
        if not self.skipped:
            return ""
        shown = ", ".join(self.skipped[:5]) + (", …" if len(self.skipped) > 5 else "")
        return f"; skipped {len(self.skipped)} empty {what} ({shown})"


def input_format(path: Path, fmt: str = "") -> str:
    if fmt:
        return fmt
    ext = path.suffix.lower().lstrip(".")
    fmt = {"ndjson": "jsonl", "json": "jsonl", "text": "txt"}.get(ext, ext)
    if fmt not in FORMATS:
        raise BulkError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                        f"pass --input-format ({', '.join(FORMATS)})")
    return fmt


def read_records(path: Path, fmt: str = "", text_field: str = "text", id_field: str = "id") -> Records:
    """Texts and their ids (the `id_field` value where present, else the row number from 0)."""
    if not path.is_file():
        raise BulkError(f"{path}: no such file")
    fmt = input_format(path, fmt)
    ids: list[str] = []
    texts: list[str] = []
    places: list[str] = []
    skipped: list[str] = []

    def add(row: int, text, rid, where: str) -> None:
        if text is None or (isinstance(text, str) and not text.strip()):
            skipped.append(where)
            return
        if not isinstance(text, str):
            raise BulkError(f"{where}: field {text_field!r} is not a string")
        texts.append(text)
        ids.append(str(row) if rid is None else str(rid))
        places.append(where)

    if fmt == "txt":
        with open(path, encoding="utf-8") as f:
            for row, line in enumerate(f):
                add(row, line.rstrip("\n"), None, f"{path}:{row + 1}")
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            row = 0
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BulkError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise BulkError(f"{path}:{n}: expected a JSON object with a {text_field!r} field")
                if text_field not in obj:
                    raise BulkError(f"{path}:{n}: no field {text_field!r} (fields: {', '.join(obj) or 'none'}); "
                                    "choose it with --text-field")
                add(row, obj.get(text_field), obj.get(id_field), f"{path}:{n}")
                row += 1
    elif fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            if text_field not in (reader.fieldnames or []):
                raise BulkError(f"{path}: no column {text_field!r} (columns: {reader.fieldnames})")
            for row, rec in enumerate(reader):
                add(row, rec[text_field], rec.get(id_field), f"{path}:{row + 2}")
    else:  # parquet
        pq = _pyarrow_parquet()
        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise BulkError(f"{path}: no column {text_field!r} (columns: {table.column_names})")
        col = table.column(text_field).to_pylist()
        id_col = table.column(id_field).to_pylist() if id_field in table.column_names else [None] * len(col)
        for row, (text, rid) in enumerate(zip(col, id_col, strict=True)):
            add(row, text, rid, f"{path}: row {row}")
    return Records(ids, texts, places, skipped)


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BulkError("Parquet needs pyarrow: pip install 'ember[bulk]'") from None
    return pq


# ---- output ---------------------------------------------------------------------------------
def output_kind(path: Path, allowed: Sequence[str]) -> str:
    """The output's format from its extension, with what it needs checked before any work."""
    kind = path.suffix.lower().lstrip(".")
    if kind not in allowed:
        raise BulkError(f"{path}: the output must end in {' or '.join('.' + a for a in allowed)}")
    if kind == "parquet":
        _pyarrow()
    return kind


def ids_path(out: Path) -> Path:
    """Where the ids of an .npy output go: beside it, as a JSON array (row i of the array = ids[i])."""
    return out.with_name(out.stem + ".ids.json")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write arr to path atomically (through an open file: np.save would add .npy to the temp name)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)
    _atomic(path, write)


def _write_embeddings(out: Path, kind: str, ids: list[str], vectors: np.ndarray) -> None:
    if kind == "npy":
        _atomic(ids_path(out), lambda p: p.write_text(json.dumps(ids), encoding="utf-8"))
        _save_npy(out, vectors)
        return
    pa = _pyarrow()
    dim = vectors.shape[1]
    values = pa.array(vectors.reshape(-1), type=pa.from_numpy_dtype(vectors.dtype.newbyteorder("=")))
    emb = pa.FixedSizeListArray.from_arrays(values, dim)
    table = pa.table({"id": pa.array(ids, type=pa.string()), "embedding": emb})
    _atomic(out, lambda p: _pyarrow_parquet().write_table(table, p))


def _pyarrow():
    _pyarrow_parquet()
    import pyarrow as pa
    return pa


# ---- resumable chunks -----------------------------------------------------------------------
class Chunks:
    """The chunk files of one job under OUTPUT.partial/."""

    def __init__(self, out: Path, n: int, chunk_size: int, identity: dict, restart: bool):
        self.dir = out.with_name(out.name + ".partial")
        self.n, self.size = n, chunk_size
        self.count = (n + chunk_size - 1) // chunk_size
        job = self.dir / "job.json"
        if self.dir.exists() and restart:
            self.clear()
        if job.is_file():
            recorded = json.loads(job.read_text())
            if recorded != identity:
                changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
                raise BulkError(f"{self.dir} holds a different job (changed: {', '.join(changed)}); "
                                "pass --restart to discard it")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic(job, lambda p: p.write_text(json.dumps(identity, indent=1)))

    def path(self, i: int) -> Path:
        return self.dir / f"chunk-{i:06d}.npy"

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.size, min(self.n, (i + 1) * self.size)

    def done(self) -> list[int]:
        return [i for i in range(self.count) if self.path(i).is_file()]

    def todo(self) -> list[int]:
        return [i for i in range(self.count) if not self.path(i).is_file()]

    def save(self, i: int, arr: np.ndarray) -> None:
        _save_npy(self.path(i), arr)

    def load(self, i: int) -> np.ndarray:
        return np.load(self.path(i))

    def clear(self) -> None:
        for p in self.dir.iterdir():
            p.unlink()
        self.dir.rmdir()


def _resume(out: Path, n: int, identity: dict, args, command: str, unit: str) -> tuple[Chunks, Progress]:
    """The job's chunks (what a previous run finished is kept) and a progress bar starting there."""
    chunks = Chunks(out, n, args.chunk_size, identity, args.restart)
    done = chunks.done()
    if done:
        print(f"ember {command}: resuming: {len(done)} of {chunks.count} chunks already done", file=sys.stderr)
    finished = sum(end - start for start, end in map(chunks.bounds, done))
    return chunks, Progress(n, finished, command, unit, not args.no_progress)


def _file_identity(path: Path, key: str) -> dict:
    """A file as a job records it: where it is, its size and mtime (an edited file is another job)."""
    st = path.stat()
    return {key: str(path.resolve()), f"{key}_bytes": st.st_size, f"{key}_mtime_ns": st.st_mtime_ns}


class Progress:
    """tqdm's bar (texts/s, ETA) on stderr, or nothing."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, smoothing=0.1,
                            mininterval=0.5, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- the server: a running one, or one in this process --------------------------------------
@contextlib.contextmanager
def server_target(server: str, serve_args: dict) -> Iterator[str]:
    """Yield a gRPC target: `server` itself, or an in-process ember server's loopback address."""
    if server:
        yield server
        return
    import asyncio

    from . import settings as settings_mod
    from .app import EmberServer

    cfg = settings_mod.from_sources({**serve_args, "host": "127.0.0.1", "port": 0, "metrics": False, "http": False,
                                     "reflection": False})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ember-inprocess", daemon=True)
    thread.start()

    def call(coro, timeout=600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def start() -> tuple[EmberServer, int]:
        srv = EmberServer(cfg)  # grpc.aio binds a server to the loop it is made on
        port = await srv.start()
        await asyncio.wait_for(srv.loaded.wait(), 600)
        return srv, port

    srv = None
    try:
        srv, port = call(start())
        if not srv.registry.models:
            raise BulkError(f"the in-process server loaded no model: {dict(srv.registry.errors)}")
        yield f"127.0.0.1:{port}"
    finally:
        if srv is not None:
            call(srv.drain(5.0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _client(target: str, api_key: str):
    from ember_client import Client

    return Client(target, api_key=api_key or None, timeout=None)


def _violation(err) -> tuple[str, str] | None:
    """The field and description of an INVALID_ARGUMENT's first field violation, if it has one."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(err)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                info = error_details_pb2.BadRequest()
                detail.Unpack(info)
                if info.field_violations:
                    v = info.field_violations[0]
                    return v.field, v.description
    except Exception:  # no details: the caller reports the status as it is
        pass
    return None


def _index(field: str, name: str) -> int | None:
    """k of `name[k]`."""
    if field.startswith(name + "[") and field.endswith("]") and field[len(name) + 1:-1].isdigit():
        return int(field[len(name) + 1:-1])
    return None


def _retrying(run: Callable[[], None], retries: int, what: str,
              locate: Callable[[object], str | None] = lambda e: None) -> None:
    """Run a pass over the remaining chunks; a server that goes away is retried with backoff. An
    input the server refuses (INVALID_ARGUMENT) ends the job at once, named by `locate` (its file
    line and id): running again would only fail the same way."""
    import grpc
    from ember_client import RETRYABLE

    for attempt in range(retries + 1):
        try:
            run()
            return
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                where = locate(e)
                problem = (_violation(e) or ("", e.details()))[1]
                raise BulkError(f"{where}: {problem}; fix the input, then run the same command again (finished "
                                "chunks are kept)" if where else
                                f"the server refused the input: {e.details()}") from None
            if code not in RETRYABLE or attempt == retries:
                raise BulkError(f"the server answered {code.name}: {e.details()}; finished chunks are kept, "
                                "rerun the same command to resume") from None
            delay = min(10.0, 0.5 * 2 ** attempt)
            print(f"ember: {what}: {code.name} ({e.details()}); retrying the remaining chunks in {delay:.1f}s",
                  file=sys.stderr)
            time.sleep(delay)


# ---- shards ---------------------------------------------------------------------------------
def parse_shard(spec: str, environ=os.environ) -> tuple[int, int] | None:
    """`INDEX/COUNT` (INDEX may be `job`: JOB_COMPLETION_INDEX, as a Kubernetes Indexed Job sets it)."""
    if not spec:
        return None
    index, _, count = spec.partition("/")
    if index == "job":
        index = environ.get("JOB_COMPLETION_INDEX", "")
        if not index:
            raise BulkError("--shard job/COUNT: JOB_COMPLETION_INDEX is not set (it is in a Kubernetes Indexed Job)")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise BulkError(f"--shard {spec!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4 (or job/4)")
    return int(index), int(count)


def shard_path(out: Path, index: int, count: int) -> Path:
    width = max(4, len(str(count)))
    return out.with_name(f"{out.stem}.shard-{index:0{width}d}-of-{count:0{width}d}{out.suffix}")


def shard_rows(n: int, index: int, count: int) -> range:
    """The contiguous rows of shard `index`: the same for every worker that reads the same input."""
    return range(n * index // count, n * (index + 1) // count)


def merge(args) -> str:
    out = Path(args.output)
    kind = output_kind(out, ("npy", "parquet"))
    pattern = re.compile(re.escape(out.stem) + r"\.shard-(\d+)-of-(\d+)" + re.escape(out.suffix) + "$")
    found = sorted((int(m.group(2)), int(m.group(1)), p) for p in out.parent.glob(f"{out.stem}.shard-*{out.suffix}")
                   if (m := pattern.match(p.name)))
    if not found:
        raise BulkError(f"no shards of {out} (expected {shard_path(out, 0, 2).name} and the like)")
    counts = {c for c, _, _ in found}
    if len(counts) != 1:
        raise BulkError(f"shards of {out} from jobs of different sizes ({sorted(counts)} parts); remove the stale ones")
    count = counts.pop()
    missing = sorted(set(range(count)) - {i for _, i, _ in found})
    if missing:
        shown = ", ".join(map(str, missing[:10]))
        raise BulkError(f"{len(missing)} of {count} shards of {out} are missing (index {shown}); run them, then "
                        "merge again")
    parts = [p for _, _, p in found]
    if kind == "npy":
        vectors = np.concatenate([np.load(p) for p in parts])
        ids = [i for p in parts for i in json.loads(ids_path(p).read_text(encoding="utf-8"))]
    else:
        pq = _pyarrow_parquet()
        table = _pyarrow().concat_tables([pq.read_table(p) for p in parts])
        column = table.column("embedding")
        dtype = column.type.value_type.to_pandas_dtype()
        ids, vectors = table.column("id").to_pylist(), np.asarray(column.to_pylist(), dtype)
    _write_embeddings(out, kind, ids, vectors)
    return f"merged {count} shards -> {out}: {vectors.shape[0]} x {vectors.shape[1]} {vectors.dtype.name}"


# ---- ember embed ----------------------------------------------------------------------------
def embed(args) -> str:
    src, out = Path(args.input), Path(args.output)
    kind = output_kind(out, ("npy", "parquet"))
    shard = parse_shard(getattr(args, "shard", ""))
    if args.chunk_size <= 0 or args.batch_size <= 0 or args.chunk_size % args.batch_size:
        raise BulkError("--chunk-size must be a positive multiple of --batch-size")
    recs = read_records(src, args.input_format, args.text_field, args.id_field)
    if not recs.texts:
        raise BulkError(f"{src}: no texts" + recs.skipped_note())
    if shard is not None:
        rows = shard_rows(len(recs.texts), *shard)
        recs = Records([recs.ids[r] for r in rows], [recs.texts[r] for r in rows], [recs.where[r] for r in rows],
                       recs.skipped)
        out = shard_path(out, *shard)
        if not recs.texts:
            raise BulkError(f"shard {shard[0]}/{shard[1]} of {src} holds no texts")
    options = {"model": args.model, "input_type": args.input_type, "prompt_name": args.prompt_name,
               "dimensions": args.dimensions, "chunk_size": args.chunk_size, "text_field": args.text_field,
               "shard": list(shard) if shard else None, "encoding": getattr(args, "encoding", "float32")}
    chunks, progress = _resume(out, len(recs.texts), {**_file_identity(src, "input"), **options}, args, "embed",
                               "text")
    sent = [0]
    locate = StreamPlace(args.batch_size)
    locate.records = recs

    with server_target(args.server, _serve_args(args)) as target, _client(target, args.api_key) as client:
        facts = _facts_of(client, args.model, "embed")
        if facts.outputs and "dense" not in facts.outputs:
            raise BulkError(f"--model: {facts.name} has no dense vectors (its outputs: {', '.join(facts.outputs)}); "
                            "ember embed writes dense vectors: choose an embedding model that has them")

        def run() -> None:
            todo = chunks.todo()
            locate.sending = [r for i in todo for r in range(*chunks.bounds(i))]
            texts = (recs.texts[r] for r in locate.sending)
            parts: list[np.ndarray] = []
            it = iter(todo)
            current = next(it, None)
            have = 0
            for arr in client.embed_stream(texts, batch_size=args.batch_size, model=args.model,
                                           input_type=args.input_type, prompt_name=args.prompt_name,
                                           dimensions=args.dimensions, priority="bulk",
                                           streams=_streams(args, target), encoding=options["encoding"]):
                parts.append(arr)
                have += len(arr)
                sent[0] += len(arr)
                progress.update(len(arr))
                start, end = chunks.bounds(current)
                if have == end - start:
                    chunks.save(current, np.concatenate(parts))
                    parts, have = [], 0
                    current = next(it, None)

        try:
            _retrying(run, args.retries, "ember embed", locate)
        finally:
            progress.close()
    missing = chunks.todo()
    if missing:
        raise BulkError(f"{len(missing)} chunks are missing after the run; rerun to resume")
    vectors = np.concatenate([chunks.load(i) for i in range(chunks.count)])
    _write_embeddings(out, kind, recs.ids, vectors)
    chunks.clear()
    extra = f" (+ ids in {ids_path(out).name})" if kind == "npy" else ""
    return (f"embedded {len(recs.texts)} texts ({sent[0]} in this run) -> {out}{extra}: "
            f"{vectors.shape[0]} x {vectors.shape[1]} {vectors.dtype.name}{recs.skipped_note()}")


# ---- ember rerank ---------------------------------------------------------------------------
def rerank(args) -> str:
    qsrc, dsrc, out = Path(args.queries), Path(args.documents), Path(args.output)
    kind = output_kind(out, ("npy", "parquet", "jsonl"))
    if args.chunk_size <= 0 or args.docs_per_request <= 0 or args.concurrency <= 0:
        raise BulkError("--chunk-size, --docs-per-request and --concurrency must be positive")
    queries = read_records(qsrc, args.input_format, args.query_field, args.id_field)
    docs = read_records(dsrc, args.input_format, args.text_field, args.id_field)
    if not queries.texts or not docs.texts:
        raise BulkError("no queries or no documents" + queries.skipped_note("queries") + docs.skipped_note("documents"))
    options = {"model": args.model, "raw_scores": args.raw_scores, "chunk_size": args.chunk_size,
               **_file_identity(dsrc, "documents"), "query_field": args.query_field, "text_field": args.text_field,
               "instruction": args.instruction}
    chunks, progress = _resume(out, len(queries.texts), {**_file_identity(qsrc, "input"), **options}, args,
                               "rerank", "query")
    groups = [(s, min(len(docs.texts), s + args.docs_per_request))
              for s in range(0, len(docs.texts), args.docs_per_request)]
    with server_target(args.server, _serve_args(args)) as target, _client(target, args.api_key) as client, \
            ThreadPoolExecutor(args.concurrency) as pool:
        def scores(q: int, g: tuple[int, int]) -> tuple[int, int, np.ndarray]:
            import grpc

            try:
                hits = client.rerank(queries.texts[q], docs.texts[g[0]:g[1]], model=args.model,
                                     raw_scores=args.raw_scores, priority="bulk", instruction=args.instruction)
            except grpc.RpcError as e:  # name the query or document the server refused
                v = _violation(e)
                k = _index(v[0], "documents") if v else None
                e.ember_where = (queries.describe(q) if v and v[0] == "query" else
                                 docs.describe(g[0] + k) if k is not None else None)
                raise
            row = np.empty(g[1] - g[0], dtype=np.float32)
            for h in hits:
                row[h.index] = h.score
            return q, g[0], row

        def run_pairs() -> None:
            for i in chunks.todo():
                start, end = chunks.bounds(i)
                block = np.empty((end - start, len(docs.texts)), dtype=np.float32)
                for q, s, row in pool.map(lambda qg: scores(*qg), [(q, g) for q in range(start, end) for g in groups]):
                    block[q - start, s:s + len(row)] = row
                chunks.save(i, block)
                progress.update(end - start)

        place = StreamPlace(64)

        def run_vectors() -> None:
            # An embedding model scores by cosine similarity, as its Rerank does: each document and
            # each query embedded once (normalized, with the model's document / query prompts),
            # the scores one matrix product, instead of every document again for every query.
            stream = dict(model=args.model, priority="bulk", batch_size=place.batch_size,
                          streams=_streams(args, target))
            place.records, place.sending = docs, list(range(len(docs.texts)))
            d = np.concatenate(list(client.embed_stream(docs.texts, input_type="document", **stream)))
            for i in chunks.todo():
                start, end = chunks.bounds(i)
                place.records, place.sending = queries, list(range(start, end))
                q = np.concatenate(list(client.embed_stream(queries.texts[start:end], input_type="query", **stream)))
                chunks.save(i, (q @ d.T).astype(np.float32))
                progress.update(end - start)

        # (a model with multi-vectors scores by MaxSim on the server, a SPLADE model by its sparse
        # vectors: each query's documents go to Rerank)
        facts = _facts_of(client, args.model)
        if facts.task == "embed" and facts.outputs in ((), ("dense",)):
            if args.instruction:
                raise BulkError("--instruction: the model is an embedding model, which takes no instruction (only "
                                "rerankers with a prompt template do); leave it out")
            run, locate = run_vectors, place
        else:
            run, locate = run_pairs, lambda e: getattr(e, "ember_where", None)
        try:
            _retrying(run, args.retries, "ember rerank", locate)
        finally:
            progress.close()
    scores_all = np.concatenate([chunks.load(i) for i in range(chunks.count)])
    if kind == "npy":
        _atomic(ids_path(out), lambda p: p.write_text(json.dumps({"queries": queries.ids, "documents": docs.ids})))
        _save_npy(out, scores_all)
        what = f"scores {scores_all.shape[0]} x {scores_all.shape[1]} (+ ids in {ids_path(out).name})"
    else:
        top = args.top_n or len(docs.texts)
        order = np.argsort(-scores_all, axis=1, kind="stable")[:, :top]
        rows = [(queries.ids[q], rank + 1, docs.ids[d], float(scores_all[q, d]))
                for q in range(len(queries.texts)) for rank, d in enumerate(order[q])]
        if kind == "jsonl":
            _atomic(out, lambda p: p.write_text("".join(
                json.dumps({"query_id": a, "rank": b, "doc_id": c, "score": s}) + "\n" for a, b, c, s in rows)))
        else:
            pa = _pyarrow()
            cols = list(zip(*rows, strict=True))
            table = pa.table({"query_id": pa.array(cols[0], pa.string()), "rank": pa.array(cols[1], pa.int32()),
                              "doc_id": pa.array(cols[2], pa.string()), "score": pa.array(cols[3], pa.float32())})
            _atomic(out, lambda p: _pyarrow_parquet().write_table(table, p))
        what = f"top {top} of {len(docs.texts)} documents per query, {len(rows)} rows"
    chunks.clear()
    return (f"reranked {len(queries.texts)} queries -> {out}: {what}"
            f"{queries.skipped_note('queries')}{docs.skipped_note('documents')}")


def _streams(args, target) -> int:
    """--streams, or one stream per replica the target resolves to."""
    from ember_client import replicas

    return getattr(args, "streams", 0) or len(replicas(target))


def _facts_of(client, model: str, task: str = "rerank"):
    """The ModelFacts of the model that `task` calls (Embed or Rerank) with `model` would use."""
    facts = client.list_models()
    default = (lambda m: m.is_default_rerank) if task == "rerank" else (lambda m: m.is_default_embed)
    chosen = [m for m in facts if m.name == model] if model else [m for m in facts if default(m)]
    if not chosen:
        known = ", ".join(m.name for m in facts) or "none"
        raise BulkError(f"--model: the server has no model {model!r} (models: {known})" if model else
                        f"the server has no model for {task.capitalize()}")
    return chosen[0]


class StreamPlace:
    """Which record an EmbedStream refused: its status names the message (the ember-request-id
    trailer, the message's number in the stream) and the field (`inputs[k]`); `sending` is set to
    the records the stream sends, in order, before it starts."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.records: Records | None = None
        self.sending: list[int] = []

    def __call__(self, err) -> str | None:
        md = dict(err.trailing_metadata() or ())
        message, v = md.get("ember-request-id"), _violation(err)
        k = _index(v[0], "inputs") if v else None
        if self.records is None or message is None or not message.isdigit() or k is None:
            return None
        pos = int(message) * self.batch_size + k
        return self.records.describe(self.sending[pos]) if pos < len(self.sending) else None


def _serve_args(args) -> dict:
    """Settings for an in-process server (only used without --server)."""
    out = {}
    if args.models_dir:
        out["models_dir"] = args.models_dir
    if args.model:
        out["models"] = args.model
    if args.config:
        out["config"] = args.config
    return out
