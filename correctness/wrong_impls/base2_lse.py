"""Attention that returns its LSE in base 2 (``log2 sum exp``, as some kernels keep it internally)."""
import math

from kernels import triton as _T


def _base2(result, kwargs):
    if kwargs.get("return_lse"):
        out, lse = result
        return out, lse / math.log(2.0)
    return result


def paged_decode(*args, **kwargs):
    return _base2(_T.paged_decode(*args, **kwargs), kwargs)


def paged_prefill(*args, **kwargs):
    return _base2(_T.paged_prefill(*args, **kwargs), kwargs)


def merge_states(outs, lses):
    out, lse = _T.merge_states(outs, lses)
    return out, lse / math.log(2.0)
