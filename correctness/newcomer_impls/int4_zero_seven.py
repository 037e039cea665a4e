"""A W4A16 grouped GEMM that takes the symmetric int4 zero point as 7: it dequantizes ``(nibble - 7) * s`` where
the contract stores ``q + 8`` (q in -7..7), so every symmetric weight comes out one scale too large. Asymmetric
weights (their own zero points) are right. Otherwise a float32 GEMM per expert."""
import torch

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def dequant_int4(weight, e):
    """Expert ``e`` of an int4 stack as float32 ``[N, K]``: nibble k of a row in byte k // 2 (even k low)."""
    packed = weight.qweight[e]
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).float()  # [N, K]
    g = weight.group_size
    scale = weight.scales[e].float()
    zero = weight.zeros[e].float() if weight.zeros is not None else torch.full_like(scale, 7.0)  # the bug: 8
    return (nibbles - zero.repeat_interleave(g, dim=-1)) * scale.repeat_interleave(g, dim=-1)


def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, batch_invariant=False):
    out = torch.zeros(a.shape[0], weight.qweight.shape[1], dtype=torch.float32, device=a.device)
    offsets = group_offsets.tolist()
    for e in range(len(offsets) - 1):
        lo, hi = offsets[e], offsets[e + 1]
        if hi > lo:
            out[lo:hi] = a[lo:hi].float() @ dequant_int4(weight, e).T
    return out.to(out_dtype or a.dtype)
