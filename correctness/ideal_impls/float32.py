"""float32 everywhere: each op is the eager torch baseline's (``kernels.torch_eager``: float32 inputs, float32
math and accumulation, one cast of the result to the output dtype). It must pass every parity test of what it
provides. ``num_splits``, ``split_size`` and ``batch_invariant`` choose a kernel's partitioning, not the math:
taken and ignored (each row is computed on its own)."""
import torch

from kernels import torch_eager as _E

SERVEKERNELS_TRITON = False


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None, soft_cap=None,
                 k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, return_lse=False,
                 batch_invariant=False, sinks=None):
    return _E.paged_decode(q, k_cache, v_cache, block_table, seq_lens, scale=scale, sliding_window=sliding_window,
                           soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale, num_splits=num_splits,
                           split_size=split_size, return_lse=return_lse, sinks=sinks)


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, sliding_window=None,
                  soft_cap=None, k_scale=1.0, v_scale=1.0, return_lse=False, batch_invariant=False, sinks=None):
    return _E.paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=scale,
                            sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale,
                            return_lse=return_lse, sinks=sinks)


def merge_states(outs, lses):
    return _E.merge_states(outs, lses)


def write_kv(key, value, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0):
    return _E.write_kv(key, value, k_cache, v_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)


def grouped_gemm(a, w, group_offsets, *, out_dtype=None, batch_invariant=False):
    return _E.grouped_gemm(a, w, group_offsets, out_dtype=out_dtype)


def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, batch_invariant=False):
    return _E.grouped_gemm_int4(a, weight, group_offsets, out_dtype=out_dtype)


def grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, *, out_dtype=torch.bfloat16, batch_invariant=False):
    return _E.grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, out_dtype=out_dtype)


def grouped_gemm_mxfp4(a, weight, group_offsets, *, bias=None, out_dtype=None, batch_invariant=False):
    return _E.grouped_gemm_mxfp4(a, weight, group_offsets, bias=bias, out_dtype=out_dtype)


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", w13_bias=None, w2_bias=None,
              batch_invariant=False):
    return _E.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation, w13_bias=w13_bias,
                        w2_bias=w2_bias)


from correctness.ideal_impls.float64_out import quantize_fp8, quantize_int4  # noqa: E402,F401 - formats: exact


def dequantize_int4(weight):
    return _E.dequantize_int4(weight)


def quantize_fp8_act(a, group_size=128):
    return _E.quantize_fp8_act(a, group_size)


def route(router_logits, top_k, *, renormalize=True, scoring="softmax", correction_bias=None, num_groups=None,
          topk_groups=None, routed_scaling_factor=1.0):
    return _E.route(router_logits, top_k, renormalize=renormalize, scoring=scoring, correction_bias=correction_bias,
                    num_groups=num_groups, topk_groups=topk_groups, routed_scaling_factor=routed_scaling_factor)


def moe_permute(topk_ids, num_experts):
    return _E.moe_permute(topk_ids, num_experts)
