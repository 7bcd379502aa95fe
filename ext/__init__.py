"""Post-processing kernels: the compiled Cython module, or its NumPy twin if it is not built.

`ember.ext.kernels` is the implementation the server uses; `ember.ext.numpy_kernels` is the
twin, importable always. `COMPILED` says which one `kernels` is.
"""
from __future__ import annotations

import logging

from . import numpy_kernels

try:
    from . import _kernels as kernels

    COMPILED = True
except ImportError:  # pragma: no cover - only where the extension was not built
    logging.getLogger(__name__).warning("ember.ext._kernels is not built; using the NumPy twin")
    kernels = numpy_kernels  # type: ignore[assignment]
    COMPILED = False

try:
    from ._bufpool import BufferPool, cuda_error, cuda_runtime
except ImportError:  # pragma: no cover - only where the extension was not built: no pool, no IO binding
    BufferPool = None  # type: ignore[assignment,misc]

    def cuda_runtime(load: bool = False) -> str:  # type: ignore[misc]
        return ""

    def cuda_error() -> str:  # type: ignore[misc]
        return "ember.ext._bufpool is not built"

__all__ = ["kernels", "numpy_kernels", "COMPILED", "BufferPool", "cuda_error", "cuda_runtime"]
