"""`ember embed` / `ember rerank`: formats, progress, and a killed run resumed to the same output.

The bulk commands run as real subprocesses (`python -m ember embed …`) against a real server (the
tiny models, so 20,000 texts take seconds) or an in-process one.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import real_texts
from ember.v1 import ember_pb2 as pb

N = 20_000


def ember(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True, text=True, timeout=600, **kw)


def corpus(n: int) -> list[str]:
    """n distinct texts of varied length, made from real sentences."""
    base = real_texts(400, 20)
    return [f"{i}: {base[i % len(base)]}" + (" " + base[(i * 7) % len(base)] if i % 3 == 0 else "")
            for i in range(n)]


def write_jsonl(path: Path, n: int) -> Path:
    """n texts of corpus() as JSONL rows {"id": "doc-i", "text": ...}."""
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(corpus(n)):
            f.write(json.dumps({"id": f"doc-{i}", "text": t}) + "\n")
    return path


def server_scores(server, model: str, query: str, docs: list[str]) -> np.ndarray:
    """The server's own Rerank scores of docs for query, in document order (64 documents a call)."""
    want = np.empty(len(docs), dtype=np.float32)
    for s in range(0, len(docs), 64):
        resp = server.reranker.Rerank(pb.RerankRequest(model=model, query=query, documents=docs[s:s + 64]))
        for h in resp.results:
            want[s + h.index] = h.score
    return want


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("bulk") / "corpus.jsonl", N)


def reference(server, texts: list[str]) -> np.ndarray:
    out = []
    for s in range(0, len(texts), 32):
        resp = server.embedder.Embed(pb.EmbedRequest(inputs=texts[s:s + 32], encoding=pb.ENCODING_FLOAT32_BYTES))
        out.append(np.frombuffer(b"".join(e.packed for e in resp.embeddings), "<f4").reshape(len(resp.embeddings), -1))
    return np.concatenate(out)


def test_embed_20k_jsonl_killed_and_resumed_gives_the_same_output(tiny_server, jsonl, tmp_path):
    common = ["--server", tiny_server.address, "--chunk-size", "1024", "--batch-size", "32"]
    clean = tmp_path / "clean.npy"
    r = ember("embed", str(jsonl), "-o", str(clean), *common)
    assert r.returncode == 0, r.stderr
    assert f"embedded {N} texts ({N} in this run)" in r.stdout
    assert "text/s" in r.stderr  # the progress bar: rate and ETA
    ids = json.loads((tmp_path / "clean.ids.json").read_text())
    assert ids == [f"doc-{i}" for i in range(N)]
    vectors = np.load(clean)
    assert vectors.shape == (N, 32) and vectors.dtype == np.float32
    texts = [json.loads(line)["text"] for line in jsonl.read_text(encoding="utf-8").splitlines()]
    sample = np.r_[0:100, N - 100:N]
    ref = reference(tiny_server, [texts[i] for i in sample])
    assert np.abs(vectors[sample] - ref).max() < 1e-5

    # The same job, killed (SIGKILL: no chance to clean up) once a few chunks are saved.
    out = tmp_path / "resumed.npy"
    partial = tmp_path / "resumed.npy.partial"
    kill_after(["embed", str(jsonl), "-o", str(out), *common, "--no-progress"], partial, 4)
    assert not out.exists()
    saved = {int(p.name[6:12]): np.load(p) for p in partial.glob("chunk-*.npy")}
    assert 4 <= len(saved) < 20
    for arr in saved.values():  # every chunk on disk is whole: written aside, then renamed
        assert arr.shape == (1024, 32)

    r = ember("embed", str(jsonl), "-o", str(out), *common, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(saved)} of 20 chunks already done" in r.stderr
    assert f"({N - 1024 * len(saved)} in this run)" in r.stdout  # finished chunks were not sent again
    assert json.loads((tmp_path / "resumed.ids.json").read_text()) == ids
    resumed = np.load(out)
    assert resumed.shape == vectors.shape
    for i, arr in saved.items():  # the chunks finished before the kill are in the output as they were
        assert np.array_equal(resumed[i * 1024:(i + 1) * 1024], arr)
    np.testing.assert_allclose(resumed, vectors, rtol=0, atol=1e-6)
    assert not partial.exists()
    print(f"\nkilled after {len(saved)}/20 chunks; resumed output max |diff| vs the clean run "
          f"{np.abs(resumed - vectors).max():.2e}")


def test_a_partial_run_of_another_job_is_refused(tiny_server, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(corpus(300)), encoding="utf-8")
    out = tmp_path / "v.npy"
    (tmp_path / "v.npy.partial").mkdir()
    (tmp_path / "v.npy.partial" / "job.json").write_text(json.dumps({"input": "elsewhere"}))
    r = ember("embed", str(src), "-o", str(out), "--server", tiny_server.address, "--no-progress")
    assert r.returncode == 2 and "holds a different job" in r.stderr and "--restart" in r.stderr
    r = ember("embed", str(src), "-o", str(out), "--server", tiny_server.address, "--no-progress", "--restart",
              "--dimensions", "16")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (300, 16)
    np.testing.assert_allclose(np.linalg.norm(np.load(out), axis=1), 1, atol=1e-5)
    assert json.loads((tmp_path / "v.ids.json").read_text()) == [str(i) for i in range(300)]  # row numbers


def test_parquet_and_csv_in_parquet_out_with_an_in_process_server(tiny_models_dir, tiny_server, tmp_path):
    texts = corpus(500)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(500)], "body": texts}), tmp_path / "in.parquet")
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "body"])
        w.writerows([f"k{i}", t] for i, t in enumerate(texts))
    ref = reference(tiny_server, texts)
    for src in ("in.parquet", "in.csv"):
        out = tmp_path / f"{src}.out.parquet"
        # no --server: ember starts its own server in the process, on the tiny models
        r = ember("embed", str(tmp_path / src), "-o", str(out), "--models-dir", str(tiny_models_dir), "--model",
                  "tiny-embed", "--text-field", "body", "--id-field", "key", "--no-progress", "--chunk-size", "128")
        assert r.returncode == 0, r.stderr
        table = pq.read_table(out)
        assert table.column("id").to_pylist() == [f"k{i}" for i in range(500)]
        got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        assert np.abs(got - ref).max() < 1e-5


def test_bad_input_is_named(tiny_server, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    r = ember("embed", str(src), "-o", str(tmp_path / "o.npy"), "--server", tiny_server.address)
    assert r.returncode == 2 and "bad.jsonl:2: not valid JSON" in r.stderr
    src.write_text('{"body": "no text field"}\n', encoding="utf-8")
    r = ember("embed", str(src), "-o", str(tmp_path / "o.npy"), "--server", tiny_server.address)
    assert r.returncode == 2 and "bad.jsonl:1: no field 'text' (fields: body)" in r.stderr
    r = ember("embed", str(src), "-o", str(tmp_path / "o.csv"), "--server", tiny_server.address)
    assert r.returncode == 2 and "must end in .npy or .parquet" in r.stderr


def kill_after(args: list[str], partial: Path, chunks: int) -> int:
    """Start `python -m ember ARGS`, SIGKILL it once `chunks` chunk files are saved; returns how many were."""
    proc = subprocess.Popen([sys.executable, "-m", "ember", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while len(list(partial.glob("chunk-*.npy"))) < chunks:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(partial.glob("chunk-*.npy")))


def test_rerank_queries_against_documents_resumes(tiny_server, tmp_path):
    queries = real_texts(120, 0)[:120]
    docs = corpus(300)
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "text": q}) + "\n"
                                              for i, q in enumerate(queries)), encoding="utf-8")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": d}) + "\n"
                                              for i, d in enumerate(docs)), encoding="utf-8")
    common = ["rerank", str(tmp_path / "q.jsonl"), str(tmp_path / "d.jsonl"), "--server", tiny_server.address,
              "--model", "tiny-rerank", "--docs-per-request", "64", "--chunk-size", "4", "--no-progress"]
    r = ember(*common, "-o", str(tmp_path / "scores.npy"))
    assert r.returncode == 0, r.stderr
    scores = np.load(tmp_path / "scores.npy")
    assert scores.shape == (120, 300)
    assert json.loads((tmp_path / "scores.ids.json").read_text())["documents"][:2] == ["d0", "d1"]
    for q in (0, 77):  # a row = the server's own scores for that query, in document order
        np.testing.assert_allclose(scores[q], server_scores(tiny_server, "tiny-rerank", queries[q], docs), atol=1e-6)

    # top-3 rows as JSONL: a clean run, and a run killed after a few chunks and resumed
    clean = tmp_path / "clean.jsonl"
    assert ember(*common, "-o", str(clean), "--top-n", "3").returncode == 0
    out = tmp_path / "top.jsonl"
    done = kill_after([*common, "-o", str(out), "--top-n", "3"], tmp_path / "top.jsonl.partial", 3)
    assert 3 <= done < 30
    r = ember(*common, "-o", str(out), "--top-n", "3")
    assert r.returncode == 0, r.stderr
    assert f"resuming: {done} of 30 chunks already done" in r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in clean.read_text().splitlines()]
    assert len(rows) == 360
    assert [(r["query_id"], r["rank"], r["doc_id"]) for r in rows] == \
        [(r["query_id"], r["rank"], r["doc_id"]) for r in want]
    np.testing.assert_allclose([r["score"] for r in rows], [r["score"] for r in want], atol=1e-6)
    for q in (0, 119):
        best = np.argsort(-scores[q], kind="stable")[:3]
        assert [r["doc_id"] for r in rows if r["query_id"] == f"q{q}"] == [f"d{i}" for i in best]


def test_embed_help_lists_the_formats():
    r = ember("embed", "--help")
    assert r.returncode == 0 and "Parquet" in r.stdout and "--chunk-size" in r.stdout


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "txt"])
def test_empty_texts_are_skipped_and_counted_in_every_format(tiny_server, tmp_path, fmt):
    """A blank line or an empty cell among real texts: left out of the output, counted and named in
    the summary; every other text embedded as the server embeds it."""
    texts = ["first text", "", "third text", "   ", "fifth text"]
    src = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
        blank = [f"{src}:2", f"{src}:4"]
    elif fmt == "csv":
        with open(src, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text"])
            w.writerows([f"r{i}", t] for i, t in enumerate(texts))
        blank = [f"{src}:3", f"{src}:5"]
    else:
        src.write_text("\n".join(texts) + "\n")
        blank = [f"{src}:2", f"{src}:4"]
    out = tmp_path / "out.npy"
    r = ember("embed", str(src), "-o", str(out), "--server", tiny_server.address, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "embedded 3 texts" in r.stdout and f"skipped 2 empty texts ({blank[0]}, {blank[1]})" in r.stdout
    kept = [t for t in texts if t.strip()]
    np.testing.assert_allclose(np.load(out), reference(tiny_server, kept), atol=1e-6)
    ids = json.loads((tmp_path / "out.ids.json").read_text())
    assert ids == (["0", "2", "4"] if fmt == "txt" else ["r0", "r2", "r4"])


def test_an_input_the_server_refuses_is_named_by_its_line_and_id_and_not_retried(tiny_server, tmp_path):
    """tiny_server allows 5,000 characters per input: the one too long is named by its file line and
    id, the job stops at once (no retry loop), and what finished before it is kept."""
    src = tmp_path / "in.jsonl"
    rows = [{"id": f"doc-{i}", "text": f"text {i}"} for i in range(100)]
    rows[70]["text"] = "x " * 3000
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.monotonic()
    r = ember("embed", str(src), "-o", str(tmp_path / "o.npy"), "--server", tiny_server.address, "--no-progress",
              "--chunk-size", "32", "--batch-size", "16")
    assert r.returncode == 2, r.stderr
    assert f"{src}:71 (id doc-70): has 6000 characters" in r.stderr and "fix the input" in r.stderr
    assert "retrying" not in r.stderr and time.monotonic() - t0 < 60
    assert len(list((tmp_path / "o.npy.partial").glob("chunk-*.npy"))) == 2  # rows 0-63 finished and kept


def test_parquet_output_without_pyarrow_fails_before_any_work(tiny_server, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    blocker = tmp_path / "site"
    (blocker / "pyarrow").mkdir(parents=True)
    (blocker / "pyarrow" / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(blocker)}
    r = ember("embed", str(src), "-o", str(tmp_path / "o.parquet"), "--server", tiny_server.address, env=env)
    assert r.returncode == 2 and "Parquet needs pyarrow" in r.stderr
    assert not (tmp_path / "o.parquet.partial").exists()  # nothing was started


def test_rerank_with_an_embedding_model_embeds_each_text_once_with_the_servers_scores(tiny_server, tmp_path):
    queries, docs = real_texts(30, 0)[:6], corpus(200)
    (tmp_path / "q.txt").write_text("\n".join(queries) + "\n")
    (tmp_path / "d.txt").write_text("\n".join(docs) + "\n")
    prom = tiny_server.server.metrics.prom

    def tokens_served() -> float:
        return prom.get_sample_value("ember_input_tokens_total", {"model": "tiny-embed"}) or 0.0

    def tokens_of(texts: list[str], input_type: int) -> int:  # as the model tokenizes them, prompt included
        return sum(t.tokens for s in range(0, len(texts), 64) for t in tiny_server.models.Tokenize(
            pb.TokenizeRequest(model="tiny-embed", inputs=texts[s:s + 64], input_type=input_type)).inputs)

    before = tokens_served()
    r = ember("rerank", str(tmp_path / "q.txt"), str(tmp_path / "d.txt"), "-o", str(tmp_path / "s.npy"),
              "--server", tiny_server.address, "--model", "tiny-embed", "--no-progress", "--chunk-size", "2")
    assert r.returncode == 0, r.stderr
    sent = tokens_served() - before
    # each document embedded once (with the document prompt), each query once (the query prompt)
    assert sent == tokens_of(docs, pb.INPUT_TYPE_DOCUMENT) + tokens_of(queries, pb.INPUT_TYPE_QUERY)
    scores = np.load(tmp_path / "s.npy")
    assert scores.shape == (6, 200)
    for q in range(6):  # today's scores: the server's own Rerank of the same query and documents
        np.testing.assert_allclose(scores[q], server_scores(tiny_server, "tiny-embed", queries[q], docs), atol=1e-5)


def test_embed_with_compact_encodings_to_npy_parquet_and_merged_shards(tiny_server, tmp_path):
    """--encoding ubinary / float16: the stored rows are the server's float32 vectors encoded, in
    .npy and in Parquet (its list type follows), and shards merge keeping the type."""
    from sentence_transformers import quantize_embeddings

    texts = corpus(300)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    ref = reference(tiny_server, texts)
    common = ("--server", tiny_server.address, "--no-progress", "--chunk-size", "64", "--batch-size", "16")
    r = ember("embed", str(src), "-o", str(tmp_path / "bits.npy"), "--encoding", "ubinary", *common)
    assert r.returncode == 0, r.stderr
    assert "300 x 4 uint8" in r.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "bits.npy"), quantize_embeddings(ref, "ubinary"))
    for shard in ("0/2", "1/2"):
        r = ember("embed", str(src), "-o", str(tmp_path / "half.parquet"), "--encoding", "float16", "--shard", shard,
                  *common)
        assert r.returncode == 0, r.stderr
    r = ember("merge", str(tmp_path / "half.parquet"))
    assert r.returncode == 0 and "300 x 32 float16" in r.stdout, r.stdout + r.stderr
    table = pq.read_table(tmp_path / "half.parquet")
    assert table.schema.field("embedding").type.value_type == pa.float16()
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float16)
    np.testing.assert_array_equal(got, ref.astype(np.float16))
    # int8 on a model that has no calibrated ranges: one line naming the option's field, no retries
    r = ember("embed", str(src), "-o", str(tmp_path / "q.npy"), "--encoding", "int8", *common)
    assert r.returncode == 2 and "ember calibrate" in r.stderr and "Traceback" not in r.stderr, r.stderr
