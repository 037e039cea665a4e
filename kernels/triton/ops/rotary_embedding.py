"""Rotary position embedding, in place on q and k (NeoX halves or GPT-J pairs, partial rotary).

One program per token: it loads the token's position (int64: any position, past 2**16 and past 2**31 / rd) and
its cos/sin row once, then rotates every q head and every k head in tiles of ``BLOCK_HEADS`` heads x ``rd / 2``
pairs: each rotated element read once and written once, the dims past ``rotary_dim`` never touched (counted
traffic is the minimum: the spec's goal is <= 1.05). float32 inside: ``(a, b) <- (a cos - b sin, b cos + a sin)``,
one cast on store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.norms import check_rotary
from kernels.triton.common import check_launch_device, next_pow2
from kernels.validate import torch_arguments

TILE = 2048  # rotated pairs per tile: BLOCK_HEADS heads x BLOCK_HALF pairs, two values each (a and b)


@triton.jit
def _rotate_heads(base, num_heads, stride_h, stride_d, cos, sin, half,
                  IS_NEOX: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Rotate the first ``2 * half`` dims of ``num_heads`` heads at ``base`` in place."""
    pairs = tl.arange(0, BLOCK_HALF)
    pair_ok = pairs < half
    if IS_NEOX:
        first, second = pairs, pairs + half
    else:
        first, second = 2 * pairs, 2 * pairs + 1
    for h0 in range(0, num_heads, BLOCK_HEADS):
        heads = h0 + tl.arange(0, BLOCK_HEADS)
        mask = (heads < num_heads)[:, None] & pair_ok[None, :]
        row = base + heads.to(tl.int64)[:, None] * stride_h
        pa, pb = row + first[None, :] * stride_d, row + second[None, :] * stride_d
        a = tl.load(pa, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(pb, mask=mask, other=0.0).to(tl.float32)
        tl.store(pa, (a * cos[None, :] - b * sin[None, :]).to(base.dtype.element_ty), mask=mask)
        tl.store(pb, (b * cos[None, :] + a * sin[None, :]).to(base.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, num_q_heads, num_kv_heads, half,
                   stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd, stride_cp, stride_cd,
                   IS_NEOX: tl.constexpr, BLOCK_HEADS_Q: tl.constexpr, BLOCK_HEADS_K: tl.constexpr,
                   BLOCK_HALF: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    pairs = tl.arange(0, BLOCK_HALF)
    pair_ok = pairs < half
    row = cache_ptr + pos * stride_cp
    cos = tl.load(row + pairs * stride_cd, mask=pair_ok, other=0.0).to(tl.float32)
    sin = tl.load(row + (pairs + half) * stride_cd, mask=pair_ok, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + tok * stride_qt, num_q_heads, stride_qh, stride_qd, cos, sin, half,
                  IS_NEOX, BLOCK_HEADS_Q, BLOCK_HALF)
    _rotate_heads(k_ptr + tok * stride_kt, num_kv_heads, stride_kh, stride_kd, cos, sin, half,
                  IS_NEOX, BLOCK_HEADS_K, BLOCK_HALF)


def _heads_block(num_heads: int, block_half: int) -> int:
    return min(next_pow2(num_heads), max(1, TILE // block_half))


@annotate("rotary_embedding")
@torch_arguments
def rotary_embedding(positions, q, k, cos_sin_cache, *, is_neox, rotary_dim=None, validate: bool = True):
    """Rotate ``q [T, Hq, D]`` and ``k [T, Hk, D]`` in place (any strides: views of one qkv buffer work); returns
    ``(q, k)``. ``validate=False`` skips the position range check (the one device read)."""
    rd = check_rotary(positions, q, k, cos_sin_cache, is_neox, rotary_dim, validate=validate)
    check_launch_device("q", q)
    t, hq, _ = q.shape
    if t == 0:
        return q, k
    half = rd // 2
    block_half = next_pow2(half)
    bq, bk = _heads_block(hq, block_half), _heads_block(k.shape[1], block_half)
    _rotary_kernel[(t,)](positions, q, k, cos_sin_cache, hq, k.shape[1], half,
                         *q.stride(), *k.stride(), *cos_sin_cache.stride(),
                         IS_NEOX=bool(is_neox), BLOCK_HEADS_Q=bq, BLOCK_HEADS_K=bk, BLOCK_HALF=block_half,
                         num_warps=4)
    return q, k
