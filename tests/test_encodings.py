"""Compact encodings of dense vectors (float16, bfloat16, int8/uint8, binary/ubinary) through the
server, against sentence-transformers' quantize_embeddings on the server's own float32 vectors;
`ember calibrate` and the refusals a user meets."""
import json

import grpc
import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from conftest import minilm_dir, real_texts, run_export, start_server
from ember import cli
from ember.v1 import ember_pb2 as pb
from ember_client import Client

TEXTS = real_texts(60, 6)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """all-MiniLM-L6-v2 calibrated with `ember calibrate` on STS-B sentences, and a server on it
    beside an uncalibrated copy."""
    models = tmp_path_factory.mktemp("enc-models")
    run_export(minilm_dir(), models / "minilm", "embed")
    run_export(minilm_dir(), models / "raw", "embed")
    sample = tmp_path_factory.mktemp("enc-sample") / "sample.jsonl"
    sample.write_text("".join(json.dumps({"text": t}) + "\n" for t in real_texts(300, 20)))
    assert cli.main(["calibrate", str(models / "minilm"), "--texts", str(sample)]) == 0
    server = start_server(models_dir=str(models), default_embed_model="minilm")
    yield models, server
    server.stop()


def test_calibrate_records_the_ranges_of_the_served_vectors(calibrated, capsys):
    models, server = calibrated
    ranges = json.loads((models / "minilm" / "ember.json").read_text())["quantization_ranges"]
    assert list(ranges) == ["384"]
    lo, hi = (np.array(v, dtype=np.float32) for v in ranges["384"])
    assert lo.shape == hi.shape == (384,) and (lo < hi).all() and (lo >= -1).all() and (hi <= 1).all()
    info = {m.name: m for m in server.models.ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert pb.ENCODING_INT8 in info["minilm"].encodings and pb.ENCODING_UINT8 in info["minilm"].encodings
    assert pb.ENCODING_INT8 not in info["raw"].encodings and pb.ENCODING_UBINARY in info["raw"].encodings
    assert list(info["minilm"].outputs) == [pb.EMBED_OUTPUT_DENSE]


@pytest.mark.parametrize("precision", ["binary", "ubinary", "int8", "uint8"])
def test_quantized_encodings_equal_quantize_embeddings(calibrated, precision):
    models, server = calibrated
    lo, hi = (np.array(v, dtype=np.float32)
              for v in json.loads((models / "minilm" / "ember.json").read_text())["quantization_ranges"]["384"])
    with Client(server.address) as c:
        floats = c.embed(TEXTS)
        got = c.embed(TEXTS, encoding=precision)
    ref = quantize_embeddings(floats, precision, ranges=np.vstack([lo, hi]) if "int8" in precision else None)
    assert got.dtype == ref.dtype and got.shape == ref.shape == (len(TEXTS), 48 if "binary" in precision else 384)
    np.testing.assert_array_equal(got, ref)


def test_float16_and_bfloat16_are_the_float32_vectors_rounded(calibrated):
    torch = pytest.importorskip("torch")
    _, server = calibrated
    with Client(server.address) as c:
        floats = c.embed(TEXTS)
        half = c.embed(TEXTS, encoding="float16")
        bf = c.embed(TEXTS, encoding="bfloat16")
    np.testing.assert_array_equal(half, floats.astype(np.float16))
    ref = torch.from_numpy(floats).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf, ref)


def test_encodings_on_a_stream_driven_message_by_message_and_with_matryoshka_ranges(calibrated):
    _, server = calibrated
    with Client(server.address) as c:
        floats = c.embed(TEXTS, dimensions=128)
        lo, hi = floats.min(axis=0) - 0.01, floats.max(axis=0) + 0.01
        streamed = np.concatenate(list(c.embed_stream(iter(TEXTS), batch_size=7, encoding="uint8", dimensions=128,
                                                      int8_ranges=(lo, hi))))
        bits = np.concatenate(list(c.embed_stream(iter(TEXTS), batch_size=5, encoding="ubinary")))
    np.testing.assert_array_equal(streamed, quantize_embeddings(floats, "uint8", ranges=np.vstack([lo, hi])))
    with Client(server.address) as c:
        np.testing.assert_array_equal(bits, quantize_embeddings(c.embed(TEXTS), "ubinary"))


def _refused(server, **kw) -> str:
    with pytest.raises(grpc.RpcError) as e:
        server.embedder.Embed(pb.EmbedRequest(inputs=["a text"], **kw), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.details()


def test_what_cannot_be_encoded_is_refused_naming_the_field(calibrated):
    _, server = calibrated
    detail = _refused(server, model="raw", encoding=pb.ENCODING_INT8)
    assert detail.startswith("encoding:") and "ember calibrate" in detail and "int8_ranges" in detail
    assert "normalize=false" in _refused(server, encoding=pb.ENCODING_UINT8, normalize=False)
    assert "128 dimensions" in _refused(server, encoding=pb.ENCODING_INT8, dimensions=128)
    three = pb.QuantizationRanges(min=[0.0] * 3, max=[1.0] * 3)
    detail = _refused(server, encoding=pb.ENCODING_INT8, int8_ranges=three)
    assert detail.startswith("int8_ranges:") and "384 dimensions" in detail
    detail = _refused(server, encoding=pb.ENCODING_INT8, int8_ranges=pb.QuantizationRanges(min=[1.0], max=[0.0]))
    assert detail.startswith("int8_ranges:")
    assert _refused(server, encoding=99).startswith("encoding:")
    detail = _refused(server, outputs=[pb.EMBED_OUTPUT_SPARSE])
    assert detail.startswith("outputs:") and "no SPARSE output" in detail and "DENSE" in detail
    assert _refused(server, outputs=[7]).startswith("outputs[0]:")
    assert _refused(server, outputs=[pb.EMBED_OUTPUT_DENSE],
                    sparse=pb.SparseOptions(min_weight=-1)).startswith("sparse.min_weight:")


def test_calibrate_refuses_too_few_texts_and_a_reranker(calibrated, tmp_path, capsys):
    models, _ = calibrated
    few = tmp_path / "few.txt"
    few.write_text("one text\nanother\n")
    assert cli.main(["calibrate", str(models / "raw"), "--texts", str(few)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ember calibrate:") and "at least 100" in err and "Traceback" not in err
    assert cli.main(["calibrate", str(tmp_path / "nowhere"), "--texts", str(few)]) == 2
    assert "no ember.json" in capsys.readouterr().err


def test_a_model_calibrated_while_served_takes_its_ranges_on_rescan(calibrated, tmp_path):
    """`ember calibrate` on a served model's directory, then SIGHUP / Admin Rescan: the model is
    reloaded with its ranges and answers INT8 (runs last: it calibrates the module's `raw` model)."""
    models, server = calibrated
    sample = tmp_path / "sample.txt"
    sample.write_text("\n".join(real_texts(150, 0)) + "\n")
    assert cli.main(["calibrate", str(models / "raw"), "--texts", str(sample)]) == 0
    out = server.call(server.server.rescan())
    assert out["reloaded"] == ["raw"] and not out["refused"]
    with Client(server.address) as c:
        got = c.embed(TEXTS[:4], model="raw", encoding="int8")
    assert got.dtype == np.int8 and got.shape == (4, 384)
