"""Reusable host buffers for inference inputs and outputs.

A buffer is taken for a batch and given back after it; the next batch of the same size bucket
(the byte size rounded up to a power of two) gets the same memory back, so a steady stream of
batches allocates nothing. With a CUDA runtime in the process (found at run time with dlopen:
building needs no CUDA) the buffers are page-locked (`cudaHostAlloc`), so host↔device copies
run at full speed and without a staging copy; otherwise they are plain memory aligned to 64
bytes. ONNX Runtime's IO binding reads the inputs from these buffers and writes the outputs into
them (see ember.engine).

Thread safety: every method runs holding the GIL and calls nothing that releases it.
"""
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo
from libc.stdint cimport uintptr_t

import os

import numpy as np


cdef extern from "dlfcn.h" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    int RTLD_LAZY
    int RTLD_LOCAL
    int RTLD_NOLOAD

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)
    void free(void *ptr)

ctypedef int (*host_alloc_t)(void **ptr, size_t size, unsigned int flags) nogil
ctypedef int (*free_host_t)(void *ptr) nogil

cdef host_alloc_t _cuda_host_alloc = NULL
cdef free_host_t _cuda_free_host = NULL
cdef str _cuda_source = ""
cdef str _cuda_error = ""

cdef bint _trial_alloc(str name):
    """A runtime without a usable device (no driver, no GPU) fails here, not on the first batch."""
    global _cuda_error
    cdef void *p = NULL
    cdef int rc = _cuda_host_alloc(&p, 4096, 0)
    if rc != 0 or p == NULL:
        _cuda_error = f"{name} found, but cudaHostAlloc failed with CUDA error {rc} (no usable device)"
        return False
    _cuda_free_host(p)
    return True


CUDART_NAMES = ("libcudart.so.12", "libcudart.so.11.0", "libcudart.so")


cdef bint _find_cuda(bint load):
    """Look up cudaHostAlloc/cudaFreeHost: in a CUDA runtime already in the process (onnxruntime-gpu
    loads one), or, with `load`, one the dynamic linker can find (EMBER_CUDART names a file)."""
    global _cuda_host_alloc, _cuda_free_host, _cuda_source
    if _cuda_host_alloc != NULL:
        return True
    names = ([os.environ["EMBER_CUDART"]] if os.environ.get("EMBER_CUDART") else []) + list(CUDART_NAMES)
    cdef void *lib = NULL
    cdef int flags
    for name in names:
        flags = RTLD_LAZY | RTLD_LOCAL | (0 if load else RTLD_NOLOAD)
        lib = dlopen(name.encode(), flags)
        if lib != NULL:
            _cuda_host_alloc = <host_alloc_t>dlsym(lib, b"cudaHostAlloc")
            _cuda_free_host = <free_host_t>dlsym(lib, b"cudaFreeHost")
            if _cuda_host_alloc != NULL and _cuda_free_host != NULL and _trial_alloc(name):
                _cuda_source = name
                return True
            _cuda_host_alloc = NULL
            _cuda_free_host = NULL
    dlerror()
    return False


def cuda_error() -> str:
    """Why the last look for a CUDA runtime found none usable ("" if it found one or none was there)."""
    return _cuda_error


def cuda_runtime(load: bool = False) -> str:
    """The CUDA runtime the pool would page-lock with ("" = none found)."""
    return _cuda_source if _find_cuda(load) else ""


def _nbytes(shape, dt) -> int:
    n = dt.itemsize
    for d in shape:
        n *= d
    return n


cdef class Block:
    """One buffer: `nbytes` of host memory at `address`, exposed through the buffer protocol."""
    cdef void *ptr
    cdef readonly size_t nbytes
    cdef readonly bint pinned

    def __cinit__(self):
        self.ptr = NULL

    @staticmethod
    cdef Block allocate(size_t nbytes, bint pinned, size_t alignment):
        cdef Block b = Block.__new__(Block)
        cdef void *p = NULL
        cdef int rc
        if pinned:
            rc = _cuda_host_alloc(&p, nbytes, 0)
            if rc != 0 or p == NULL:
                raise MemoryError(f"cudaHostAlloc({nbytes}) failed with CUDA error {rc}")
        else:
            rc = posix_memalign(&p, alignment, nbytes)
            if rc != 0 or p == NULL:
                raise MemoryError(f"posix_memalign({nbytes}) failed ({rc})")
        b.ptr, b.nbytes, b.pinned = p, nbytes, pinned
        return b

    @property
    def address(self) -> int:
        return <uintptr_t>self.ptr

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, <Py_ssize_t>self.nbytes, 0, flags | PyBUF_WRITABLE)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def array(self, shape, dtype) -> np.ndarray:
        """A NumPy view of the first prod(shape) items (keeps this block alive)."""
        dt = np.dtype(dtype)
        nbytes = _nbytes(shape, dt)
        if nbytes > self.nbytes:
            raise ValueError(f"{tuple(shape)} {dt} needs {nbytes} bytes; the block has {self.nbytes}")
        return np.frombuffer(self, dtype=dt, count=nbytes // dt.itemsize).reshape(shape)

    def __dealloc__(self):
        if self.ptr != NULL:
            if self.pinned:
                _cuda_free_host(self.ptr)
            else:
                free(self.ptr)
            self.ptr = NULL


cdef size_t _bucket(size_t nbytes):
    cdef size_t b = 4096
    while b < nbytes:
        b <<= 1
    return b


cdef class BufferPool:
    """Blocks by size bucket (powers of two from 4 KiB), reused across batches.

    `pinned`: "auto" (page-locked when a CUDA runtime is in the process), "yes", or "no".
    `max_bytes`: free blocks beyond this many bytes in all are released instead of kept.
    """
    cdef dict _free
    cdef readonly bint pinned
    cdef readonly size_t max_bytes
    cdef readonly size_t alignment
    cdef size_t _held, _free_bytes, _peak, _in_use
    cdef unsigned long long _hits, _allocations, _requests

    def __init__(self, pinned="auto", size_t max_bytes=256 << 20, size_t alignment=64):
        if pinned not in ("auto", "yes", "no"):
            raise ValueError("pinned must be auto, yes or no")
        if pinned == "yes" and not _find_cuda(True):
            raise RuntimeError(f"pinned buffers need a usable CUDA runtime (libcudart): "
                               f"{_cuda_error or 'none was found'}")
        self.pinned = pinned != "no" and _find_cuda(pinned == "yes")
        self.max_bytes = max_bytes
        self.alignment = alignment
        self._free = {}
        self._held = self._free_bytes = self._peak = self._in_use = 0
        self._hits = self._allocations = self._requests = 0

    def take(self, size_t nbytes) -> Block:
        """A block of at least nbytes (from the pool when one of its bucket is free)."""
        cdef size_t b = _bucket(max(nbytes, <size_t>1))
        cdef list free_list = self._free.get(b)
        cdef Block blk
        self._requests += 1
        if free_list:
            blk = free_list.pop()
            self._hits += 1
            self._free_bytes -= b
        else:
            blk = Block.allocate(b, self.pinned, self.alignment)
            self._allocations += 1
            self._held += b
            if self._held > self._peak:
                self._peak = self._held
        self._in_use += 1
        return blk

    def give(self, Block blk) -> None:
        """Return a block taken from this pool; beyond max_bytes of free blocks it is released."""
        self._in_use -= 1
        if self._free_bytes + blk.nbytes > self.max_bytes:
            self._held -= blk.nbytes
            return  # the last reference goes with the caller's: freed
        self._free.setdefault(blk.nbytes, []).append(blk)
        self._free_bytes += blk.nbytes

    def array(self, shape, dtype) -> tuple:
        """(block, array view of `shape` and `dtype` over it); give the block back when done."""
        dt = np.dtype(dtype)
        blk = self.take(_nbytes(shape, dt))
        return blk, blk.array(shape, dt)

    def stats(self) -> dict:
        return {"requests": self._requests, "hits": self._hits, "allocations": self._allocations,
                "bytes_held": self._held, "free_bytes": self._free_bytes, "peak_bytes": self._peak,
                "in_use": self._in_use, "pinned": int(self.pinned)}
