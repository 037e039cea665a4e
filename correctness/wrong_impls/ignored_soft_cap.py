"""Attention that accepts ``soft_cap`` and ignores it (raw logits)."""
from kernels import triton as _T


def paged_decode(*args, soft_cap=None, **kwargs):
    return _T.paged_decode(*args, **kwargs)


def paged_prefill(*args, soft_cap=None, **kwargs):
    return _T.paged_prefill(*args, **kwargs)
