"""Numba kernels (private). Kernels take plain arrays, write into caller-allocated outputs,
validate nothing and label nothing; the public wrappers in :mod:`larbed` do that."""
