"""An fp8 GEMM that returns NaN everywhere, hoping NaN is taken for "matches" (or skipped by the comparison)."""
import torch

CAUGHT_BY = "values"


def grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, *, out_dtype=torch.bfloat16, **kwargs):
    return torch.full((a_fp8.shape[0], weight.data.shape[1]), float("nan"), dtype=out_dtype)
