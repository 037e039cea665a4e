"""The right answer, cheaply: the float64 reference, returned as a kernel would (the contract's output dtypes,
on the inputs' device). Every cheat starts from it and then cheats."""
import torch

from kernels import reference as _R

_OURS = ("validate", "max_seq_len", "max_query_len", "num_sms", "blocks_per_sm", "num_splits")


def _t(x, like, dtype):
    return torch.as_tensor(x).to(like.device, dtype)


def _attention(ref, q, args, return_lse, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k not in _OURS}
    result = ref(q, *args, return_lse=return_lse, **kwargs)
    if return_lse:
        return _t(result[0], q, q.dtype), _t(result[1], q, torch.float32)
    return _t(result, q, q.dtype)


def paged_decode(q, *args, return_lse=False, **kwargs):
    return _attention(_R.paged_decode, q, args, return_lse, kwargs)


def paged_prefill(q, *args, return_lse=False, **kwargs):
    return _attention(_R.paged_prefill, q, args, return_lse, kwargs)


def merge_states(outs, lses, **kwargs):
    out, lse = _R.merge_states(outs, lses, **kwargs)
    return _t(out, outs, outs.dtype), _t(lse, outs, torch.float32)


def grouped_gemm(a, w, group_offsets, *, out_dtype=None, **kwargs):
    return _t(_R.grouped_gemm(a, w, group_offsets, out_dtype=out_dtype, **kwargs), a, out_dtype or a.dtype)


def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, **kwargs):
    return _t(_R.grouped_gemm_int4(a, weight, group_offsets, out_dtype=out_dtype, **kwargs), a, out_dtype or a.dtype)


def grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, *, out_dtype=torch.bfloat16, **kwargs):
    return _t(_R.grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, out_dtype=out_dtype, **kwargs), a_fp8, out_dtype)


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", **kwargs):
    return _t(_R.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation, **kwargs), x, x.dtype)
