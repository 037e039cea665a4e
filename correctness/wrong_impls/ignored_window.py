"""Attention that accepts ``sliding_window`` and ignores it (every earlier key stays visible)."""
from kernels import triton as _T


def paged_decode(*args, sliding_window=None, **kwargs):
    return _T.paged_decode(*args, **kwargs)


def paged_prefill(*args, sliding_window=None, **kwargs):
    return _T.paged_prefill(*args, **kwargs)
