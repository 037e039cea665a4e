"""A merge that skips the final cast: its out stays float32 (more accurate, so it compares equal, and half a
bfloat16 caller's reads are garbage)."""
import torch

from kernels import reference as _R

CAUGHT_BY = "output dtype/shape/device"


def merge_states(outs, lses, **kwargs):
    out, lse = _R.merge_states(outs, lses)
    return torch.as_tensor(out).float(), torch.as_tensor(lse).float()
