"""The eager torch baseline (``kernels.torch_eager``) against the float64 references, on the parity inputs.

It is a second implementation of the contract, written the way a user writes one first: if it and the
reference disagree on the suite's own poisoned, ragged inputs, one of them (or the inputs) is wrong. The
tolerances are the parity suite's, derived for a float32 computation with one cast of the result (the eager
path has no interior cast of P, so the attention budget is a superset of what it needs).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.testing.assertions import assert_bitwise_equal, assert_close
from kernels.testing.moe import make_moe, moe_error_bound
from kernels.testing.paged import make_paged_batch
from kernels.testing.moe_inputs import make_grouped_gemm_inputs
from kernels.testing.tolerances import attention_out_atol, lse_atol
from kernels.testing.tolerances_gemm import U32, grouped_gemm_tol
from kernels import reference as R
from kernels import torch_eager as E

pytestmark = pytest.mark.host_only("the eager torch baseline (no Triton kernel) against the references on host tensors")

ATTN = {
    "bf16-gqa4-d128-bs16-window13-cap30": dict(num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16,
                                               dtype="bfloat16", sliding_window=13, soft_cap=30.0),
    "fp16-gqa5-d80-bs7-interleaved": dict(num_q_heads=10, num_kv_heads=2, head_dim=80, block_size=7,
                                          dtype="float16", layout="interleaved"),
    "fp32-fp8cache-d64-bs5": dict(num_q_heads=4, num_kv_heads=4, head_dim=64, block_size=5, dtype="float32",
                                  kv_dtype="float8_e4m3fn", k_scale=0.37, v_scale=1.9),
}


def _check_attention(batch, fn_eager, fn_ref, args, decode: bool):
    out, lse = fn_eager(*args, return_lse=True, **batch.kwargs)
    ref_out, ref_lse = fn_ref(*args, return_lse=True, **batch.kwargs)
    assert out.dtype == batch.q.dtype and lse.dtype == torch.float32
    dtype = str(batch.q.dtype).replace("torch.", "")
    magnitude, logit_max = batch.attention_scales(decode=decode)  # one pass for both tolerances
    assert_close(out, ref_out, atol=attention_out_atol(dtype, magnitude), name="out")
    assert_close(lse, ref_lse, atol=lse_atol(dtype, logit_max), name="lse")


@pytest.mark.parametrize("name", list(ATTN))
def test_prefill(name):
    batch = make_paged_batch([0, 1, 37, 100, 64, 150], [0, 1, 37, 29, 0, 90], loud_future=True, seed=3, **ATTN[name])
    _check_attention(batch, E.paged_prefill, R.paged_prefill, batch.prefill_args(), decode=False)


@pytest.mark.parametrize("name", list(ATTN))
def test_decode(name):
    batch = make_paged_batch([1, 513, 77, 0, 31], seed=4, **ATTN[name])
    _check_attention(batch, E.paged_decode, R.paged_decode, batch.decode_args(), decode=True)


def test_nan_value_reaches_only_the_queries_that_see_it():
    """One NaN in an owned value row: the queries that see its key get NaN out and LSE, the earlier ones
    (causal) do not; eager and reference agree element by element, NaN pattern included."""
    batch = make_paged_batch([40], [40], seed=12, **ATTN["fp16-gqa5-d80-bs7-interleaved"])
    key_pos = 25
    block = int(batch.block_table[0, key_pos // 7])
    batch.v_cache[block, key_pos % 7, 1, 3] = float("nan")
    out, lse = E.paged_prefill(*batch.prefill_args(), return_lse=True, **batch.kwargs)
    ref_out, ref_lse = R.paged_prefill(*batch.prefill_args(), return_lse=True, **batch.kwargs)
    assert torch.isnan(lse[key_pos:]).any() and not torch.isnan(lse[:key_pos]).any()
    magnitude, logit_max = batch.attention_scales()  # one pass for both tolerances
    assert_close(out, ref_out, atol=attention_out_atol("float16", magnitude), name="out")
    assert_close(lse, ref_lse, atol=lse_atol("float16", logit_max), name="lse")


def test_merge_states_with_empty_and_poisoned_partials():
    gen = torch.Generator().manual_seed(5)
    outs = torch.randn((3, 17, 5, 64), generator=gen).to(torch.float16)
    lses = torch.randn((3, 17, 5), generator=gen) * 20
    lses[1, ::2] = float("-inf")
    outs[1, ::2] = float("nan")  # an empty partial's out must not be read
    lses[:, 3, 1] = float("-inf")  # no key at all: out 0, lse -inf
    out, lse = E.merge_states(outs, lses)
    ref_out, ref_lse = R.merge_states(outs, lses)
    v_max = float(torch.nan_to_num(outs.float(), nan=0.0).abs().max())
    assert_close(out, ref_out, atol=attention_out_atol("float16", v_max), name="out")
    assert_close(lse, ref_lse, atol=lse_atol("float32", float(lses[torch.isfinite(lses)].abs().max())), name="lse")


@pytest.mark.parametrize("kv_dtype", ["float8_e4m3fn", "bfloat16"])
def test_write_kv_is_bitwise(kv_dtype):
    gen = torch.Generator().manual_seed(6)
    shape = (9, 16, 2, 64)
    dt = getattr(torch, kv_dtype)
    caches = [torch.full(shape, float("nan")).to(dt) for _ in range(4)]
    key = (torch.randn((50, 2, 64), generator=gen) * 40).to(torch.bfloat16)
    value = torch.randn((50, 2, 64), generator=gen).to(torch.bfloat16)
    slots = torch.randperm(9 * 16, generator=gen)[:50]
    slots[::5] = -1
    scales = dict(k_scale=0.2, v_scale=0.01) if kv_dtype == "float8_e4m3fn" else {}
    E.write_kv(key, value, caches[0], caches[1], slots, **scales)
    R.write_kv(key, value, caches[2], caches[3], slots, **scales)
    assert_bitwise_equal(caches[0], caches[2], name="k_cache")
    assert_bitwise_equal(caches[1], caches[3], name="v_cache")


# -------------------------------------------------------------------------------------------- GEMM / MoE

@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_grouped_gemm_dense(dtype):
    inp = make_grouped_gemm_inputs(150, 8, 72, 200, dtype, seed=7)
    w = inp.w.to(inp.a.dtype)
    y = E.grouped_gemm(inp.a, w, inp.group_offsets)
    tol = grouped_gemm_tol(inp.a, w, inp.group_offsets.numpy(), dtype)
    assert_close(y, R.grouped_gemm(inp.a, w, inp.group_offsets), **tol, name="y")


@pytest.mark.parametrize("zero_point", [False, True])
def test_grouped_gemm_int4(zero_point):
    inp = make_grouped_gemm_inputs(90, 6, 72, 192, "float16", seed=8)
    weight = R.quantize_int4(inp.w.float(), 64, zero_point)
    # (nibble - z) * s in float32: the exact product rounded once
    assert_close(E.dequantize_int4(weight), R.dequantize_int4(weight), atol=0.0, rtol=U32, name="dequantized int4")
    y = E.grouped_gemm_int4(inp.a, weight, inp.group_offsets)
    # float32 weight (1 rounding) times a float16 activation (1 rounding per product), accumulated over K
    tol = grouped_gemm_tol(inp.a, R.dequantize_int4(weight), inp.group_offsets.numpy(), "float16", extra_roundings=2)
    assert_close(y, R.grouped_gemm_int4(inp.a, weight, inp.group_offsets), **tol, name="y")


def test_quantize_fp8_act_and_grouped_gemm_fp8_block():
    inp = make_grouped_gemm_inputs(70, 5, 200, 320, "bfloat16", seed=9)
    a8, a_s = E.quantize_fp8_act(inp.a, 128)
    r8, r_s = R.quantize_fp8_act(inp.a, 128)
    assert_bitwise_equal(a8, r8, name="a_fp8")
    assert_bitwise_equal(a_s, r_s, name="a_scales")
    weight = R.quantize_fp8(inp.w.float(), "block", (128, 128))
    assert_close(E.dequantize_fp8(weight), R.dequantize_fp8(weight), atol=0.0, rtol=U32, name="dequantized fp8")
    y = E.grouped_gemm_fp8(a8, a_s, weight, inp.group_offsets)
    # dequantized activation and weight (1 rounding each) and their product (1), accumulated over K
    a_eff = a8.double() * a_s.double().repeat_interleave(128, dim=1)[:, :320]
    tol = grouped_gemm_tol(a_eff, R.dequantize_fp8(weight), inp.group_offsets.numpy(), "bfloat16", extra_roundings=3)
    assert_close(y, R.grouped_gemm_fp8(a8, a_s, weight, inp.group_offsets), **tol, name="y")


def test_route_and_permute_match_exactly():
    rng = np.random.default_rng(10)
    logits = torch.from_numpy(rng.standard_normal((64, 16))).float()
    logits[3] = 0.0  # an all-equal row: ids 0..k-1
    logits[5, :4] = 1.5  # a tie at the top
    logits[7, 2] = float("nan")  # ranks lowest; the row's weights are NaN
    ids, weights = E.route(logits, 4)
    ref_ids, ref_weights = R.route(logits, 4)
    assert_bitwise_equal(ids, torch.from_numpy(ref_ids), name="topk_ids")
    assert_close(weights, ref_weights, atol=4 * 2.0 ** -24, rtol=2 * 16 * 2.0 ** -24, name="topk_weights")
    idx, offs = E.moe_permute(ids, 16)
    ref_idx, ref_offs = R.moe_permute(ids, 16)
    assert_bitwise_equal(idx, torch.from_numpy(ref_idx), name="sorted_index")
    assert_bitwise_equal(offs, torch.from_numpy(ref_offs), name="group_offsets")


@pytest.mark.parametrize("kind", ["dense", "int4", "fp8"])
def test_fused_moe(kind):
    """The eager path keeps ``h`` in float32; the reference models that (``intermediate_dtype=float32``) and the
    bound is the fused-MoE suite's (which allows a rounding flip of ``h`` at the kernel's storage dtype: looser
    than float32 needs, never tighter)."""
    x, w13, w2, ids, weights = make_moe(97, 256, 160, 8, 2, "bfloat16", kind, seed=11)
    out = E.fused_moe(x, w13, w2, ids, weights)
    ref = R.fused_moe(x, w13, w2, ids, weights, intermediate_dtype=torch.float32)
    bound = moe_error_bound(x, w13, w2, ids, weights, ref, kind)
    got = out.double().numpy()
    assert_close(got / bound, ref / bound, atol=1.0, name=f"fused_moe {kind} (in units of the bound)")
