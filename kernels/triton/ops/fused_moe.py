"""Mixture-of-experts: the expert permutation and the fused MoE MLP (routing is ``kernels/triton/ops/route.py``).

``fused_moe`` is the classic sorted-tokens pipeline (vLLM / SGLang style), every step a kernel:

1. ``moe_permute``: a stable counting sort of the T*k (token, slot) pairs by expert -> ``sorted_index`` and
   ``group_offsets`` (torch sort/bincount: on a GPU these are single device kernels, no host loop);
2. gather the rows ``x[sorted_index // k]`` (one row per (token, slot) pair, grouped by expert; for fp8 the T
   tokens are quantized first and the fp8 rows and their scales gathered);
3. grouped GEMM gate+up against ``w13 [E, 2I, H]`` with float32 output (plus ``w13_bias``);
4. ``_silu_and_mul_kernel``: ``h = silu(gate) * up`` in float32 (or ``_swiglu_oai_kernel``: gpt-oss's clamped
   SwiGLU on interleaved gate/up columns), stored in the compute dtype (x's dtype), or in float32 when the next
   GEMM quantizes it to fp8 anyway;
5. grouped GEMM down against ``w2 [E, H, I]`` with float32 output (plus ``w2_bias``);
6. ``_unpermute_kernel``: ``out[t] = sum_j topk_weights[t, j] * y[row of (t, j)]``, a deterministic gather-sum
   in float32 (no atomics), cast to x's dtype.

Dense weights use ``grouped_gemm``; ``Int4Weight`` uses ``grouped_gemm_int4``; ``Fp8Weight`` quantizes each
GEMM's activation per token-group of 128 with ``quantize_fp8_act`` and uses ``grouped_gemm_fp8``;
``Mxfp4Weight`` uses ``grouped_gemm_mxfp4``, whose epilogue adds the biases (the other GEMMs' results get theirs
in one float32 add each).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.moe import (FP8_ACT_GROUP, SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT, check_fused_moe, check_topk_ids,
                                   check_topk_shape)
from kernels.triton.common import check_fp8_supported, check_launch_device, next_pow2
from kernels.triton.ops.grouped_gemm import grouped_gemm
from kernels.triton.ops.grouped_gemm_fp8 import grouped_gemm_fp8
from kernels.triton.ops.grouped_gemm_int4 import grouped_gemm_int4
from kernels.triton.quant import quantize_fp8_act
from kernels.validate import require, torch_arguments


# ---------------------------------------------------------------------------------------------- permute

@annotate("moe_permute")
@torch_arguments
def moe_permute(topk_ids: torch.Tensor, num_experts: int, *, validate: bool = True):
    """``(sorted_index int32 [T*k], group_offsets int32 [E + 1])``; see ``kernels.reference.moe_permute``.

    A stable sort of the flattened expert ids is exactly the stable counting sort (equal experts keep their
    (token, slot) order); ``group_offsets[e]`` is the number of ids below e, found by binary search in the
    sorted ids. ``validate=False`` skips the id range check (the only host read).
    """
    if validate:
        check_topk_ids(topk_ids, num_experts)
    else:
        check_topk_shape(topk_ids, num_experts)
    return _sort_by_expert(topk_ids, num_experts)


def _sort_by_expert(topk_ids: torch.Tensor, num_experts: int):
    """``moe_permute`` without validation (callers check the ids once). Device ops only, none of which syncs
    (``torch.bincount`` would: on CUDA it reads the largest id back to size its output)."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    sorted_ids, order = torch.sort(flat, stable=True)
    experts = torch.arange(num_experts + 1, dtype=torch.int64, device=topk_ids.device)
    offsets = torch.searchsorted(sorted_ids, experts)  # ids < e
    return order.to(torch.int32), offsets.to(torch.int32)


# ---------------------------------------------------------------------------------------------- activation

@triton.jit
def _silu_and_mul_kernel(gu_ptr, h_ptr, M, I, stride_gm, stride_hm,
                         BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    """``h[m, i] = silu(gu[m, i]) * gu[m, I + i]`` in float32, stored in h's dtype."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < M)[:, None] & (cols < I)[None, :]
    base = rows.to(tl.int64)[:, None] * stride_gm + cols[None, :]
    gate = tl.load(gu_ptr + base, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + base + I, mask=mask, other=0.0).to(tl.float32)
    # sigmoid from e^-|g| <= 1: no overflow for any g, never NaN
    z = tl.exp(-tl.abs(gate))
    sigmoid = tl.where(gate >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
    h = gate * sigmoid * up
    h_off = rows.to(tl.int64)[:, None] * stride_hm + cols[None, :]
    tl.store(h_ptr + h_off, h.to(h_ptr.dtype.element_ty), mask=mask)


@annotate("silu_and_mul")
@torch_arguments
def silu_and_mul(gu: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[M, 2I] -> [M, I]``: ``silu(gu[:, :I]) * gu[:, I:]`` (gate half first), computed in float32."""
    return _launch_gated(_silu_and_mul_kernel, gu, out_dtype)


def _launch_gated(kernel, gu: torch.Tensor, out_dtype, **constants) -> torch.Tensor:
    """``[M, 2I] -> [M, I]`` through a gated activation kernel (gate and up read from ``gu``'s 2I columns)."""
    require(gu.dim() == 2 and gu.shape[1] % 2 == 0, "gu", f"expected [M, 2I], got shape {tuple(gu.shape)}")
    require(gu.stride(1) == 1, "gu", "last dimension must be contiguous")
    check_launch_device("gu", gu)
    m, inter = gu.shape[0], gu.shape[1] // 2
    h = torch.empty((m, inter), dtype=out_dtype or gu.dtype, device=gu.device)
    if m == 0:
        return h
    grid = lambda META: (triton.cdiv(m, META["BLOCK_M"]), triton.cdiv(inter, META["BLOCK_I"]))  # noqa: E731
    kernel[grid](gu, h, m, inter, gu.stride(0), h.stride(0), **constants, BLOCK_M=16,
                 BLOCK_I=min(256, next_pow2(inter)))
    return h


@triton.jit
def _swiglu_oai_kernel(gu_ptr, h_ptr, M, I, stride_gm, stride_hm, ALPHA: tl.constexpr, LIMIT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    """gpt-oss's activation, gate and up interleaved: ``g = min(gu[m, 2i], LIMIT)``, ``u = clamp(gu[m, 2i + 1],
    -LIMIT, LIMIT)``, ``h[m, i] = g * sigmoid(ALPHA * g) * (u + 1)`` in float32, stored in h's dtype. The clamps
    propagate NaN (a GPU's min and max drop it unless told)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < M)[:, None] & (cols < I)[None, :]
    base = rows.to(tl.int64)[:, None] * stride_gm + 2 * cols[None, :]
    gate = tl.load(gu_ptr + base, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + base + 1, mask=mask, other=0.0).to(tl.float32)
    gate = tl.minimum(gate, LIMIT, propagate_nan=tl.PropagateNan.ALL)
    up = tl.maximum(tl.minimum(up, LIMIT, propagate_nan=tl.PropagateNan.ALL), -LIMIT,
                    propagate_nan=tl.PropagateNan.ALL)
    # sigmoid from e^-|z| <= 1: no overflow for any z, never NaN for a finite z
    z = ALPHA * gate
    ez = tl.exp(-tl.abs(z))
    sigmoid = tl.where(z >= 0, 1.0 / (1.0 + ez), ez / (1.0 + ez))
    h = gate * sigmoid * (up + 1.0)
    h_off = rows.to(tl.int64)[:, None] * stride_hm + cols[None, :]
    tl.store(h_ptr + h_off, h.to(h_ptr.dtype.element_ty), mask=mask)


@annotate("swiglu_oai")
@torch_arguments
def swiglu_oai(gu: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[M, 2I] -> [M, I]``: gpt-oss's clamped SwiGLU on interleaved (gate, up) columns, computed in float32."""
    return _launch_gated(_swiglu_oai_kernel, gu, out_dtype, ALPHA=SWIGLU_OAI_ALPHA, LIMIT=SWIGLU_OAI_LIMIT)


# ---------------------------------------------------------------------------------------------- un-permute

@triton.jit
def _unpermute_kernel(y_ptr, row_of_ptr, w_ptr, out_ptr, H, stride_ym, stride_ot,
                      TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """``out[t, :] = sum_j w[t, j] * y[row_of[t * TOP_K + j], :]`` in float32, in slot order (deterministic)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cmask = cols < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        row = tl.load(row_of_ptr + t * TOP_K + j).to(tl.int64)
        w = tl.load(w_ptr + t * TOP_K + j).to(tl.float32)
        y = tl.load(y_ptr + row * stride_ym + cols, mask=cmask, other=0.0).to(tl.float32)
        acc += w * y
    tl.store(out_ptr + t * stride_ot + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@annotate("moe_unpermute")
@torch_arguments
def moe_unpermute(y: torch.Tensor, sorted_index: torch.Tensor, topk_weights: torch.Tensor,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """``[T*k, H]`` rows in expert order -> ``[T, H]``: each token's rows weighted by its top-k weights, summed."""
    num_tokens, top_k = topk_weights.shape
    require(y.dim() == 2 and y.shape[0] == num_tokens * top_k, "y",
            f"expected [{num_tokens * top_k}, H], got shape {tuple(y.shape)}")
    require(y.stride(1) == 1, "y", "last dimension must be contiguous")
    hidden = y.shape[1]
    out = torch.empty((num_tokens, hidden), dtype=out_dtype, device=y.device)
    if num_tokens == 0:
        return out
    # row_of[p] = where flattened (token, slot) p sits in the expert-sorted batch
    row_of = torch.empty_like(sorted_index)
    row_of[sorted_index.long()] = torch.arange(sorted_index.numel(), dtype=sorted_index.dtype, device=y.device)
    weights = topk_weights.contiguous()
    grid = lambda META: (num_tokens, triton.cdiv(hidden, META["BLOCK_H"]))  # noqa: E731
    _unpermute_kernel[grid](y, row_of, weights, out, hidden, y.stride(0), out.stride(0),
                            TOP_K=int(top_k), BLOCK_H=min(1024, next_pow2(hidden)))
    return out


# ---------------------------------------------------------------------------------------------- fused MoE

def intermediate_dtype(kind: str, x_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``h = silu(gate) * up`` is stored in between the two GEMMs: x's dtype for dense, int4 and MXFP4
    weights (the down GEMM's operand dtype), float32 for fp8 weights (it is quantized to fp8 next, from float32,
    so no extra rounding). The parity tests pass it to the reference, which then rounds ``h`` the same way."""
    return torch.float32 if kind == "fp8" else x_dtype


def _grouped(kind: str, a, weight, offsets: torch.Tensor, batch_invariant: bool = False,
             validate: bool = True, bias=None, expert_of=None) -> torch.Tensor:
    """One grouped GEMM ``[M, K] x [E, N, K] -> [M, N]`` float32, rows grouped by ``offsets``, plus ``bias[e]``
    (float32 ``[E, N]``) on expert e's rows when given: in the MXFP4 GEMM's epilogue, else added to the float32
    result through ``expert_of`` (each row's expert). For fp8, ``a`` is the pair ``(a_fp8, a_scales)``."""
    if kind == "mxfp4":
        from kernels.triton.ops.grouped_gemm_mxfp4 import grouped_gemm_mxfp4

        return grouped_gemm_mxfp4(a, weight, offsets, bias=bias, out_dtype=torch.float32,
                                  batch_invariant=batch_invariant, validate=validate)
    y = _grouped_unbiased(kind, a, weight, offsets, batch_invariant, validate)
    return y if bias is None else y.add_(bias.index_select(0, expert_of))


def _grouped_unbiased(kind: str, a, weight, offsets: torch.Tensor, batch_invariant: bool,
                      validate: bool) -> torch.Tensor:
    if kind == "int4":

        return grouped_gemm_int4(a, weight, offsets, out_dtype=torch.float32, batch_invariant=batch_invariant,
                                 validate=validate)
    if kind == "fp8":

        return grouped_gemm_fp8(*a, weight, offsets, out_dtype=torch.float32, batch_invariant=batch_invariant,
                                 validate=validate)

    return grouped_gemm(a, weight, offsets, out_dtype=torch.float32, batch_invariant=batch_invariant,
                        validate=validate)


def _fp8_act(a: torch.Tensor):
    return quantize_fp8_act(a, FP8_ACT_GROUP)


@annotate("fused_moe")
@torch_arguments
def fused_moe(x: torch.Tensor, w13, w2, topk_ids: torch.Tensor, topk_weights: torch.Tensor, *,
              activation: str = "silu", w13_bias=None, w2_bias=None, batch_invariant: bool = False,
              validate: bool = True) -> torch.Tensor:
    """``[T, H]`` in x's dtype: ``sum_j topk_weights[t, j] * (w2[e] @ act(w13[e] @ x[t] + w13_bias[e]) + w2_bias[e])``.

    ``w13 [E, 2I, H]`` and ``w2 [E, H, I]``: dense tensors in x's dtype, ``Int4Weight``, ``Fp8Weight`` or
    ``Mxfp4Weight``; ``activation`` "silu" (gate rows, then up rows) or "swiglu_oai" (gpt-oss: interleaved, clamped;
    ``swiglu_oai``); the float32 biases optional (MXFP4: in the GEMMs' epilogues; otherwise one add per GEMM).
    All validation happens before the first launch. ``batch_invariant``: both grouped GEMMs use one tile config
    for every T; every other step is already per row (the quantization per token, the activation elementwise,
    the un-permute a per-token sum in slot order), so a token's output is bitwise independent of its neighbours
    and of where its rows sit inside their experts' groups. ``validate=False`` skips the id range check and
    passes ``validate=False`` to the GEMMs: the expert offsets stay on the device (bound-sized GEMM grids).
    """
    num_tokens, hidden, inter, num_experts, top_k, kind, _ = check_fused_moe(
        x, w13, w2, topk_ids, topk_weights, activation, validate, w13_bias=w13_bias, w2_bias=w2_bias)
    check_launch_device("x", x)
    if kind == "fp8":
        check_fp8_supported("w13", x.device)
    out = torch.empty((num_tokens, hidden), dtype=x.dtype, device=x.device)
    if num_tokens == 0:
        return out
    sorted_index, offsets = _sort_by_expert(topk_ids, num_experts)
    token_of = (sorted_index // top_k).long()  # row m serves pair sorted_index[m]; rows grouped by expert
    if kind == "fp8":
        # quantize the T tokens once (per-row groups: the same as quantizing each gathered copy), gather bytes
        x_fp8, x_scales = _fp8_act(x)
        a_fp8 = x_fp8.view(torch.uint8).index_select(0, token_of).view(x_fp8.dtype)  # a byte gather, any backend
        a = (a_fp8, x_scales.index_select(0, token_of))
    else:
        a = x.index_select(0, token_of)
    expert_of = None  # each row's expert, for a bias the GEMM does not add itself
    if kind != "mxfp4" and (w13_bias is not None or w2_bias is not None):
        expert_of = topk_ids.reshape(-1).long().index_select(0, sorted_index.long())
    gu = _grouped(kind, a, w13, offsets, batch_invariant, validate, w13_bias, expert_of)  # [T*k, 2I] float32
    act = swiglu_oai if activation == "swiglu_oai" else silu_and_mul
    h = act(gu, intermediate_dtype(kind, x.dtype))
    y = _grouped(kind, _fp8_act(h) if kind == "fp8" else h, w2, offsets, batch_invariant, validate, w2_bias,
                 expert_of)  # [T*k, H] float32
    return moe_unpermute(y, sorted_index, topk_weights, x.dtype)
