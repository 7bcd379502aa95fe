# Types shared by the kernels (cimport-able by other extensions).
ctypedef float f32
ctypedef long long i64

cdef struct ScoredIndex:
    f32 score
    i64 index
