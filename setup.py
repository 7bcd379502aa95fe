"""Build: compiles ext/*.pyx into ember.ext and generates the gRPC stubs from proto/.

Stubs are build output (never edited, never committed): they land in server/v1/ so that
`import ember.v1.ember_pb2` works both installed and in editable mode.
"""
import os
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent.resolve()
PROTO_DIR = ROOT / "proto"
STUB_DIR = ROOT / "server"  # proto package ember.v1 -> server/v1 (package `ember` is server/)


def generate_stubs() -> None:
    """Run protoc (grpc_tools) over proto/ember/v1/*.proto into the `ember.v1` package."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "ember" / "v1").glob("*.proto"))
    out = ROOT / "build" / "stubs"
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    # protoc writes ember/v1/*; the package `ember` lives in server/, so move them into server/v1.
    target = STUB_DIR / "v1"
    target.mkdir(exist_ok=True)
    (target / "__init__.py").write_text('"""Generated from proto/ember/v1 by setup.py; do not edit."""\n')
    for f in (out / "ember" / "v1").iterdir():
        if f.is_file():
            (target / f.name).write_bytes(f.read_bytes())


# Every setup.py invocation (metadata, wheel, editable) needs the `ember.v1` package to exist,
# so the stubs are generated up front; protoc over one file takes well under a second.
generate_stubs()

# Compiler directives set once, here (not per file).
DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}
extra_compile = ["-O3"] if os.name != "nt" else ["/O2"]


def numpy_extension(name: str) -> Extension:
    """ext/<name>.pyx as ember.ext.<name>, built against the NumPy C API."""
    return Extension(f"ember.ext.{name}", [f"ext/{name}.pyx"], include_dirs=[numpy.get_include()],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                     extra_compile_args=extra_compile)


extensions = [
    numpy_extension("_kernels"),
    numpy_extension("_wordpiece"),  # the WordPiece fast path (ember.tokenization, where a model qualifies)
    # The buffer pool: no NumPy C API, no CUDA headers (the runtime is looked up with dlopen).
    Extension(
        "ember.ext._bufpool",
        ["ext/_bufpool.pyx"],
        define_macros=[("_GNU_SOURCE", "1")],
        extra_compile_args=extra_compile,
        libraries=["dl"] if os.name != "nt" else [],
    ),
]

setup(
    package_dir={
        "ember": "server",
        "ember.v1": "server/v1",
        "ember.ext": "ext",
    },
    # The Python client is a distribution of its own (clients/python): the Makefile installs it.
    packages=["ember", "ember.v1", "ember.ext"],
    package_data={"ember.ext": ["*.pyx", "*.pxd"], "ember.v1": ["*.pyi"], "ember": ["py.typed"]},
    ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, include_path=["ext"]),
    zip_safe=False,
)
