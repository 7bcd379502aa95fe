"""The wire-built EmbedResponse equals the one protobuf builds field by field."""
import numpy as np
import pytest

from ember.v1 import ember_pb2 as pb
from ember.wire import embed_response


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("dim", [1, 8, 384, 1024])
def test_wire_response_equals_field_by_field(packed, dim):
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((5, dim)).astype(np.float32)
    vectors[0, 0] = np.float32(np.nan) if dim > 1 else vectors[0, 0]
    tokens = [0, 1, 127, 128, 300000]  # zero (not written), one- and multi-byte varints
    truncated = [False, True, False, True, True]
    got = embed_response(vectors, tokens, truncated, packed)
    want = pb.EmbedResponse(embeddings=[
        pb.Embedding(packed=vectors[i].astype("<f4").tobytes(), tokens=tokens[i], truncated=truncated[i]) if packed
        else pb.Embedding(values=pb.FloatVector(values=vectors[i].tolist()), tokens=tokens[i], truncated=truncated[i])
        for i in range(5)])
    assert got.SerializeToString() == want.SerializeToString()
    for e, row in zip(got.embeddings, vectors, strict=True):
        decoded = np.frombuffer(e.packed, "<f4") if packed else np.array(e.values.values, dtype=np.float32)
        np.testing.assert_array_equal(decoded.view(np.uint32), row.view(np.uint32))  # bit-exact, NaN included
