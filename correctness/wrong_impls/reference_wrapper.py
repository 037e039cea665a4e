"""A right implementation: the float64 reference, its outputs returned as a kernel would (``out`` in q's dtype,
rounded to nearest; LSE float32). It must pass everywhere a wrong one fails."""
import torch

from kernels import reference as _R


def _as_kernel(result, q, return_lse):
    if return_lse:
        out, lse = result
        return torch.as_tensor(out).to(q.device, q.dtype), torch.as_tensor(lse).to(q.device, torch.float32)
    return torch.as_tensor(result).to(q.device, q.dtype)


def paged_decode(q, *args, return_lse=False, **kwargs):
    return _as_kernel(_R.paged_decode(q, *args, return_lse=return_lse, **kwargs), q, return_lse)


def paged_prefill(q, *args, return_lse=False, **kwargs):
    return _as_kernel(_R.paged_prefill(q, *args, return_lse=return_lse, **kwargs), q, return_lse)

SERVEKERNELS_TRITON = False
SERVEKERNELS_EAGER_TORCH = False  # numpy math: the report judges it but has nothing to count
