"""A W4A16 GEMM that returns a lazy tensor: a ``torch.Tensor`` subclass holding zeros whose values are only
computed when something reads them (so the timed call does no GEMM at all)."""
import torch

from correctness.cheats import _honest

CAUGHT_BY = "plain output"


class Lazy(torch.Tensor):
    """Zeros until read: any torch function on it first fills in the real product."""

    thunk = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        for a in args:
            if isinstance(a, Lazy) and a.thunk is not None:
                thunk, a.thunk = a.thunk, None
                with torch._C.DisableTorchFunctionSubclass():
                    a.copy_(thunk())
        return super().__torch_function__(func, types, args, kwargs or {})


def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, **kwargs):
    out = torch.zeros((a.shape[0], weight.qweight.shape[1]), dtype=out_dtype or a.dtype).as_subclass(Lazy)
    out.thunk = lambda: _honest.grouped_gemm_int4(a, weight, group_offsets, out_dtype=out_dtype)
    return out
