"""gpt-oss's expert biases left out: the MXFP4 grouped GEMM drops ``bias`` and the fused MoE drops ``w13_bias`` and
``w2_bias`` (everything else is the float32 eager baseline's). Must fail ``check`` on every case that has a bias."""
from kernels import torch_eager as _E

SERVEKERNELS_TRITON = False


def grouped_gemm_mxfp4(a, weight, group_offsets, *, bias=None, out_dtype=None, batch_invariant=False):
    return _E.grouped_gemm_mxfp4(a, weight, group_offsets, out_dtype=out_dtype)  # the bug: bias never added


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", w13_bias=None, w2_bias=None,
              batch_invariant=False):
    return _E.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation)  # the bug: no biases
