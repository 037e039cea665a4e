"""Paged decode attention with split-KV (flash-decoding): one query per sequence over a paged KV cache.

One program per (sequence, KV head, partition). The query heads that share a KV head (the GQA group, any
ratio) form the M rows of the two matmuls, padded to at least 16 rows with masks, so each K/V tile is loaded
once per KV head and not once per query head. A program walks its partition of the sequence's visible keys
``[max(0, seq_len - W), seq_len)`` in tiles of ``BLOCK_N`` tokens, gathering each token's row from the paged
cache (physical block ``block_table[seq, t // block_size]``, slot ``t % block_size``, all four cache strides
honoured, block ids widened to int64 before they meet a stride), and keeps an online softmax in base 2.

Partitions: with one partition per sequence the kernel writes the output directly; otherwise it writes
float32 partials (out, natural-log LSE) that ``kernels.triton.ops.merge_states.launch_merge`` reduces. How sequences are
cut (``plan_splits``):
- ``split_size=S``: partitions of S tokens from each sequence's first visible key: a sequence's result depends
  on nothing else in the batch (bitwise).
- ``num_splits=P``: each sequence's visible span is cut into P near-equal partitions.
- ``batch_invariant=True`` with neither: ``split_size=INVARIANT_SPLIT_SIZE``, the same bitwise independence (a
  sequence with fewer partitions than the batch's longest merges its empty ones as exact no-ops).
- neither: ``split_heuristic`` picks a partition length (a multiple of the tile) so that
  ``num_seqs * num_kv_heads * partitions`` reaches ``SPLIT_BLOCKS_PER_SM`` programs per SM (``num_sms``) when
  contexts are long.

Numerics: scores ``scale * k_scale * (q . k)`` in float32 (an fp8 K is widened exactly to q's dtype and its
scale folded into the logit; ``v_scale`` is applied once to the normalised output); soft-cap through
``tanh(x) = sign(x) (1 - e) / (1 + e)``, ``e = exp(-2|x|)`` in (0, 1], which cannot overflow; the softmax
weights are cast to q's dtype before ``P @ V``; accumulation in float32. Slots past ``seq_len`` and table
entries past the last block are masked out of every load, so whatever they hold is never read.

Attention sinks (``sinks [num_q_heads]``, float32): partition 0 of each sequence starts its online softmax from the
sink (running max ``sinks[h] * log2(e)``, running sum 1, nothing accumulated), every other partition from
``-inf`` and 0, so the merge counts the sink exactly once however the sequence is cut; a partition 0 with no key
(``seq_len`` 0) writes out 0 and LSE ``sinks[h]``. A NaN or ``+inf`` sink is NaN in its head's out and LSE.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.triton.common import (DEFAULT_NUM_SMS, check_fp8_supported, check_launch_device,
                                   device_sms, mma, next_pow2, scale_operand)
from kernels.triton.ops.merge_states import MERGE_CHUNK_BELOW, launch_merge
from kernels.validate import check_attention, check_split_control, require, torch_arguments

MIN_SPLIT_TOKENS = 128  # a partition shorter than this costs more in partials and merging than it gains
MAX_PARTITIONS = 65535  # the grid's third axis
INVARIANT_SPLIT_SIZE = 256  # batch_invariant's partition length: a multiple of every BLOCK_N (32, 64)
# Programs per SM the split heuristic aims for: at most the decode kernel's resident blocks per SM on sm_90, and
# enough 4-warp blocks to keep an SM's loads in flight (the timing model's warps needed,
# ``roofline.timing_model.latency_blocks``: 7.4 on an H100 -> 2 blocks, 10.7 on an H200 -> 3). On a GPU the
# launcher computes it for the GPU it finds (by name in ``roofline.specs``); SPLIT_BLOCKS_PER_SM where it knows
# none (the interpreter, an unknown GPU).
SPLIT_BLOCKS_PER_SM = 3
DECODE_WARPS = 4
DECODE_RESIDENT_BLOCKS = 4  # the split kernel at 118 registers x 128 threads, compiled for sm_90


@triton.jit
def _softcap(s, cap):
    """``cap * tanh(s / cap)`` with ``e = exp(-2|x|)`` in (0, 1]: no inf / inf, whatever the logit."""
    x = s / cap
    e = tl.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|) = 2 ** (-2 log2(e) |x|)
    t = (1.0 - e) / (1.0 + e)
    return cap * tl.where(x < 0, -t, t)


@triton.jit
def _paged_decode_kernel(
        q_ptr, k_ptr, v_ptr, bt_ptr, sl_ptr, out_ptr, lse_ptr,
        s_qs, s_qh, s_qd,  # q [num_seqs, Hq, D]
        s_kb, s_kt, s_kh,  # k_cache [num_blocks, block_size, Hkv, D], last dim contiguous
        s_vb, s_vt, s_vh,
        s_bts, s_btb, s_sl,  # block_table [num_seqs, max_blocks], seq_lens [num_seqs]
        s_op, s_os, s_oh, s_od,  # out [P, num_seqs, Hq, D] (s_op = 0 when written directly)
        s_lp, s_ls, s_lh,  # lse [P, num_seqs, Hq]
        qk_scale, v_scale, k_scale_ptr, v_scale_ptr, soft_cap, window, part_len, num_parts,
        block_size, group, sinks_ptr,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        SOFT_CAP: tl.constexpr, WINDOW: tl.constexpr, FIXED_PART: tl.constexpr,
        K_SCALE_PTR: tl.constexpr, V_SCALE_PTR: tl.constexpr, HAS_SINKS: tl.constexpr):
    seq = tl.program_id(0)
    if K_SCALE_PTR:  # a tensor k_scale is read here, on the device (no host copy)
        qk_scale = qk_scale * tl.load(k_scale_ptr).to(tl.float32)
    if V_SCALE_PTR:
        v_scale = tl.load(v_scale_ptr).to(tl.float32)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453

    seq_len = tl.load(sl_ptr + seq * s_sl).to(tl.int32)
    lo = 0
    if WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    if FIXED_PART:
        plen = part_len
    else:
        plen = tl.cdiv(seq_len - lo, num_parts)
    start = lo + part * plen
    end = tl.minimum(start + plen, seq_len)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < group
    mask_d = offs_d < HEAD_DIM  # constexpr: folds away at a power of two, else keeps 8-wide vector loads
    heads = kvh * group + offs_m
    q = tl.load(q_ptr + seq.to(tl.int64) * s_qs + heads[:, None] * s_qh + offs_d[None, :] * s_qd,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    k_head = k_ptr + kvh.to(tl.int64) * s_kh
    v_head = v_ptr + kvh.to(tl.int64) * s_vh
    bt_row = bt_ptr + seq.to(tl.int64) * s_bts
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    sink_bad = tl.zeros((BLOCK_M,), tl.int1)
    if HAS_SINKS:  # the sink opens partition 0's softmax (a logit with no value); the others open at -inf
        sink = tl.load(sinks_ptr + heads, mask=mask_m, other=float("-inf"))
        sink = tl.where(part == 0, sink, float("-inf"))  # counted once per sequence: in partition 0 only
        sink_bad = (sink != sink) | (sink == float("inf"))  # NaN in its head's out and LSE
        m_i = sink * LOG2E
        l_i = tl.full((BLOCK_M,), 1.0, tl.float32)  # exp2(sink - m_i); a -inf start is rescaled to 0 by alpha
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for t0 in range(start, end, BLOCK_N):
        tok = t0 + offs_n
        valid = tok < end
        # per-token gather: only entries of blocks this sequence owns are read (masked past seq_len)
        block = tl.load(bt_row + (tok // block_size) * s_btb, mask=valid, other=0).to(tl.int64)
        slot = (tok % block_size).to(tl.int64)
        kv_mask = valid[:, None] & mask_d[None, :]
        k = tl.load(k_head + block[:, None] * s_kb + slot[:, None] * s_kt + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(q.dtype)  # fp8 -> q dtype is exact
        s = mma(q, tl.trans(k), tl.zeros((BLOCK_M, BLOCK_N), tl.float32)) * qk_scale
        if SOFT_CAP:
            s = _softcap(s, soft_cap)
        s = tl.where(valid[None, :], s * LOG2E, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # > -inf: every tile holds at least one valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_head + block[:, None] * s_vb + slot[:, None] * s_vt + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(q.dtype)
        acc = mma(p.to(q.dtype), v, acc * alpha[:, None])
        m_i = m_new

    # l_i is exactly 0 only for an empty partition (its largest logit contributes 1); a NaN read anywhere makes
    # l_i or acc NaN, and `== 0` is False for NaN, so NaN reaches out and LSE instead of "no visible key". With
    # sinks an empty partition keeps l_i = 1 and m_i = its sink (-inf off partition 0): out 0, LSE the sink.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    poison = tl.sum(acc, 1) * 0.0  # 0, or NaN when a value read holds NaN: then the whole row and its LSE NaN
    poison = tl.where(sink_bad, float("nan"), poison)
    out = tl.where(empty[:, None], 0.0, acc * (v_scale / l_safe)[:, None] + poison[:, None])
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * LN2 + poison)
    o_base = out_ptr + part.to(tl.int64) * s_op + seq.to(tl.int64) * s_os
    tl.store(o_base + heads[:, None] * s_oh + offs_d[None, :] * s_od, out.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    l_base = lse_ptr + part.to(tl.int64) * s_lp + seq.to(tl.int64) * s_ls
    tl.store(l_base + heads * s_lh, lse, mask=mask_m)


@dataclass(frozen=True)
class SplitPlan:
    """``num_parts`` partitions per sequence; ``part_len`` tokens each, or 0: ``ceil(span / num_parts)``."""

    num_parts: int
    part_len: int


def split_heuristic(num_seqs: int, num_kv_heads: int, max_span: int, *, num_sms: int,
                    tile: int = 64, blocks_per_sm: float = SPLIT_BLOCKS_PER_SM) -> SplitPlan:
    """Partitions for ``num_splits=None``: reach ``num_sms * blocks_per_sm`` programs (``SPLIT_BLOCKS_PER_SM``
    resident per SM) when the batch alone does not.

    ``num_seqs * num_kv_heads`` programs already that many -> no split. Otherwise cut the longest visible span
    into enough partitions for that wave, each a multiple of ``tile`` tokens (no ragged tile inside a
    partition) and at least ``MIN_SPLIT_TOKENS`` long. A fixed partition length means short sequences in a
    ragged batch get few partitions and long ones many. Pure python: no device is touched.
    """
    target = math.ceil(num_sms * max(float(blocks_per_sm), 1.0))
    base = max(num_seqs * num_kv_heads, 1)
    if base >= target or max_span <= MIN_SPLIT_TOKENS:
        return SplitPlan(1, 0)
    want = -(-target // base)
    part_len = max(-(-max_span // want) // tile * tile, MIN_SPLIT_TOKENS, tile)
    num_parts = -(-max_span // part_len)
    return SplitPlan(1, 0) if num_parts <= 1 else SplitPlan(num_parts, part_len)


def plan_splits(max_span: int, num_seqs: int, num_kv_heads: int, *, num_splits=None, split_size=None,
                num_sms: int = DEFAULT_NUM_SMS, tile: int = 64, blocks_per_sm: float = SPLIT_BLOCKS_PER_SM) -> SplitPlan:
    """The partitioning a call uses (arguments already validated)."""
    if split_size is not None:
        parts = max(-(-max_span // split_size), 1)
        return SplitPlan(parts, split_size)
    if num_splits is not None:
        return SplitPlan(num_splits, 0)
    return split_heuristic(num_seqs, num_kv_heads, max_span, num_sms=num_sms, tile=tile, blocks_per_sm=blocks_per_sm)


def _check_splits(num_splits, split_size, max_span: int) -> None:
    """The contract's rule (``check_split_control``), then this kernel's grid limit."""
    check_split_control(num_splits, split_size)
    require(num_splits is None or num_splits <= MAX_PARTITIONS, "num_splits",
            f"at most {MAX_PARTITIONS}, got {num_splits}")
    if split_size is not None:
        parts = -(-max_span // int(split_size))
        require(parts <= MAX_PARTITIONS, "split_size",
                f"{split_size} cuts a {max_span}-token span into {parts} partitions; at most {MAX_PARTITIONS}")


def _device_sms(device: torch.device, num_sms) -> int:
    if num_sms is not None:
        require(isinstance(num_sms, (int, np.integer)) and num_sms >= 1, "num_sms",
                f"must be None or an int >= 1, got {num_sms!r}")
        return int(num_sms)
    return device_sms(device, None)


def split_blocks_per_sm(device, blocks_per_sm) -> float:
    """The split plan's programs per SM (an average: 1.86 is 246 programs on 132 SMs): ``blocks_per_sm`` when
    given (a number >= 1, else a ValueError naming it); on a CUDA device whose name ``roofline.specs`` knows, the
    latency-covering count for its bandwidth per SM; else ``SPLIT_BLOCKS_PER_SM``."""
    if blocks_per_sm is not None:
        require(isinstance(blocks_per_sm, (int, float, np.integer, np.floating)) and not isinstance(blocks_per_sm, bool)
                and math.isfinite(blocks_per_sm) and blocks_per_sm >= 1, "blocks_per_sm",
                f"must be None or a number >= 1, got {blocks_per_sm!r}")
        return float(blocks_per_sm)
    if getattr(device, "type", None) == "cuda":
        return _gpu_blocks_per_sm(torch.cuda.get_device_name(device))
    return SPLIT_BLOCKS_PER_SM


@functools.lru_cache(maxsize=None)
def _gpu_blocks_per_sm(device_name: str) -> float:  # once per GPU model: a timed call does no lookup
    from roofline.specs import match_name  # deferred: roofline imports the kernels (a cycle at import)
    from roofline.timing_model import latency_blocks  # deferred: roofline imports the kernels (a cycle at import)

    spec = match_name(device_name)
    return SPLIT_BLOCKS_PER_SM if spec is None else latency_blocks(spec, DECODE_WARPS, DECODE_RESIDENT_BLOCKS)


def _tiles(head_dim: int, group: int) -> tuple[int, int, int]:
    block_d = next_pow2(head_dim)
    block_m = max(16, next_pow2(group))
    block_n = 64 if block_d * block_m <= 128 * 16 else 32  # keeps the K/V and P tiles within registers
    return block_m, block_n, block_d


@annotate("paged_decode")
@torch_arguments
def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None, soft_cap=None,
                 k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, return_lse=False, num_sms=None,
                 blocks_per_sm=None, batch_invariant=False, max_seq_len=None, validate=True, sinks=None):
    """Triton ``paged_decode`` (see the contract). ``num_sms``: programs per wave for the split heuristic
    (default: the GPU's SM count, or 132 without a GPU); ``blocks_per_sm``: programs per SM it aims for (default
    ``split_blocks_per_sm``). ``batch_invariant``: without ``num_splits`` or
    ``split_size``, partitions of ``INVARIANT_SPLIT_SIZE`` tokens (both given ones are per sequence already).

    ``max_seq_len`` (host int, the longest ``seq_len`` or an upper bound) sizes the split plan; ``validate=False``
    reads no device value (a tensor ``k_scale``/``v_scale`` is loaded by the kernel) and, without the hint, plans
    for ``max_blocks * block_size`` tokens (the block table's capacity: always a bound, possibly loose).
    """
    dims = check_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale, sliding_window=sliding_window,
                           soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale, validate=validate,
                           max_seq_len=max_seq_len, sinks=sinks)
    max_span = dims.max_seq_len if sliding_window is None else min(dims.max_seq_len, int(sliding_window))
    _check_splits(num_splits, split_size, max_span)
    if batch_invariant and num_splits is None and split_size is None:
        split_size = INVARIANT_SPLIT_SIZE
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("block_table", block_table),
                    ("seq_lens", seq_lens), ("sinks", sinks)):
        if t is not None:
            check_launch_device(name, t)
    if dims.kv_is_fp8:
        check_fp8_supported("k_cache", k_cache.device)
    sms = _device_sms(q.device, num_sms)
    per_sm = split_blocks_per_sm(q.device, blocks_per_sm)
    block_m, block_n, block_d = _tiles(dims.head_dim, dims.group)
    plan = plan_splits(max_span, dims.num_seqs, dims.num_kv_heads, num_splits=num_splits, split_size=split_size,
                       num_sms=sms, tile=block_n, blocks_per_sm=per_sm)

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((dims.num_seqs, dims.num_q_heads), dtype=torch.float32, device=q.device)
    if dims.num_seqs == 0:
        return (out, lse) if return_lse else out
    if plan.num_parts == 1:
        p_out, p_lse = out.unsqueeze(0), lse.unsqueeze(0)
    else:
        p_out = torch.empty((plan.num_parts, *q.shape), dtype=torch.float32, device=q.device)
        p_lse = torch.empty((plan.num_parts, dims.num_seqs, dims.num_q_heads), dtype=torch.float32, device=q.device)

    window = int(sliding_window) if sliding_window is not None else 0
    ks, ks_ptr, ks_dev = scale_operand(k_scale, q, "k_scale", validate)
    vs, vs_ptr, vs_dev = scale_operand(v_scale, q, "v_scale", validate)
    grid = lambda META: (dims.num_seqs, dims.num_kv_heads, plan.num_parts)  # noqa: E731
    _paged_decode_kernel[grid](
        q, k_cache, v_cache, block_table, seq_lens, p_out, p_lse,
        *q.stride(), *k_cache.stride()[:3], *v_cache.stride()[:3], *block_table.stride(), seq_lens.stride(0),
        *p_out.stride(), *p_lse.stride(),
        dims.scale * ks, vs, ks_ptr, vs_ptr,
        float(soft_cap) if soft_cap is not None else 1.0, window, plan.part_len, plan.num_parts,
        dims.block_size, dims.group, q if sinks is None else sinks.contiguous(),
        HEAD_DIM=dims.head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        SOFT_CAP=soft_cap is not None, WINDOW=sliding_window is not None, FIXED_PART=plan.part_len > 0,
        K_SCALE_PTR=ks_dev, V_SCALE_PTR=vs_dev, HAS_SINKS=sinks is not None,
        num_warps=DECODE_WARPS, num_stages=2)
    if plan.num_parts > 1:
        launch_merge(p_out, p_lse, out, lse, cut_head_dim=dims.num_seqs * dims.num_q_heads < MERGE_CHUNK_BELOW)
    return (out, lse) if return_lse else out
