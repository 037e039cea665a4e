"""A grouped GEMM that remembers its output by the inputs' addresses (``data_ptr``): a repeated call is free."""
from correctness.cheats import _honest

CAUGHT_BY = "fresh values"
_CACHE = {}


def grouped_gemm(a, w, group_offsets, *, out_dtype=None, **kwargs):
    key = (a.data_ptr(), w.data_ptr(), group_offsets.data_ptr(), tuple(a.shape))
    if key not in _CACHE:
        _CACHE[key] = _honest.grouped_gemm(a, w, group_offsets, out_dtype=out_dtype)
    return _CACHE[key].clone()
