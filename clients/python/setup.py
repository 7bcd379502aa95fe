"""Build: generates ember_client/v1 (the gRPC stubs of proto/ember/v1/ember.proto) at build time.

The proto comes from the repository (../../proto), or from EMBER_PROTO_DIR. The stubs keep the
proto's file name (ember/v1/ember.proto), so a process that also imports the server's stubs
registers the same file once; only the Python import path differs.
"""
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent.resolve()
PROTO_DIR = Path(os.environ.get("EMBER_PROTO_DIR") or HERE.parent.parent / "proto")


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    out = HERE / "build" / "stubs"
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    if protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}",
                    f"--pyi_out={out}", f"--grpc_python_out={out}", "ember/v1/ember.proto"]) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR / 'ember/v1/ember.proto'}")
    target = HERE / "ember_client" / "v1"
    target.mkdir(exist_ok=True)
    (target / "__init__.py").write_text('"""Generated from proto/ember/v1 by setup.py; do not edit."""\n')
    for f in (out / "ember" / "v1").iterdir():
        text = f.read_text().replace("from ember.v1 import", "from ember_client.v1 import")
        (target / f.name).write_text(text)


generate_stubs()
setup(packages=["ember_client", "ember_client.v1"], package_dir={"": "."}, package_data={"ember_client.v1": ["*.pyi"]})
