"""The README's examples, run as written against a live server on the embedded default model.

grpcurl is not in the package registries this project's machines reach, so its examples are run
the way grpcurl runs them: the service and message types from the server's reflection, the `-d`
JSON parsed into the request by protobuf's JSON mapping, the answer printed back as JSON. The
Python example is run as a script.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str, lang: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    m = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert m, f"no {lang} block under {heading}"
    return m.group(1)


def grpcurl_commands() -> list[list[str]]:
    block = readme_block("### With grpcurl", "bash").replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.startswith("grpcurl ")]


def grpcurl(address: str, args: list[str]) -> dict:
    """What `grpcurl -plaintext -d JSON HOST SERVICE/METHOD` does, through the server's reflection."""
    data = json.loads(args[args.index("-d") + 1])
    service, method = args[-1].rsplit("/", 1)
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        m = pool.FindServiceByName(service).FindMethodByName(method)
        request_cls = message_factory.GetMessageClass(m.input_type)
        response_cls = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(f"/{service}/{method}", request_serializer=lambda r: r.SerializeToString(),
                                   response_deserializer=response_cls.FromString)
        return json_format.MessageToDict(call(json_format.ParseDict(data, request_cls()), timeout=60))


def test_the_readmes_grpcurl_examples(minilm_server):
    commands = grpcurl_commands()
    assert [c[-1] for c in commands] == ["ember.v1.Embedder/Embed", "ember.v1.Reranker/Rerank",
                                         "grpc.health.v1.Health/Check"]
    for c in commands:
        assert c[1] == "-plaintext" and c[-2] == "localhost:50051"
    embed, rerank, health = (grpcurl(minilm_server.address, c) for c in commands)
    assert len(embed["embeddings"]) == 2 and embed["dimensions"] == 384
    assert rerank["results"][0]["document"] == "Kubernetes probes the gRPC health service"
    assert health == {"status": "SERVING"}


def test_the_readmes_python_example(minilm_server, tmp_path):
    code = readme_block("### With Python", "python").replace("localhost:50051", minilm_server.address)
    (tmp_path / "corpus.txt").write_text("one line\nanother line\n")
    code += "\nprint(vectors.shape, small.shape, len(hits), counts[0].tokens)\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(2,", "384)", "(1,", "128)", "1", "4"]
