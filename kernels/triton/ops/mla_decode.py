"""MLA paged decode (DeepSeek-V2/V3, Kimi K2): H query heads over one latent KV head, split-KV.

A cached token is ``c`` (R = kv_lora_rank values, ``kv_c_cache``) and ``k_pe`` (P rope values, ``k_pe_cache``);
the key is ``[c, k_pe]`` and the value is ``c`` itself. One program per (sequence, head tile, partition): its
rows are ``BLOCK_Q`` queries x ``BLOCK_H`` heads of one sequence (``mla_tiles``), so each latent tile of
``BLOCK_N`` tokens is gathered from the paged caches once for every query and head the program serves, and the
same registers feed both products (``S = q_nope c^T + q_pe k_pe^T``, then ``P c``: c is never loaded twice).
At H <= 32 (DeepSeek-V3 at TP8: 16) one head tile holds every head: the cache is read once per sequence.
The two caches' strides are independent (vLLM's single ``[num_blocks, block_size, R + P]`` cache passes as its
two slices, no copy); block ids are widened to int64 before they meet a stride; the query and output strides
are all honoured.

Multi-token prediction (``query_start_loc``): query j of a sequence sits at ``seq_len - q_len + j`` and sees
keys up to it; a key's value NaN poisons only the rows that see it (0 * NaN in ``P c`` would reach the earlier
queries too), as in the prefill kernel.

Partitions (``mla_split_plan``): ``split_size`` and ``num_splits`` as ``paged_decode``'s; without either, enough
partitions to fill the machine, each long enough that its float32 partials stay within ``MLA_SPLIT_TRAFFIC`` of
the latent bytes it reads (an MLA partial is H x R floats: far larger per token than a GQA head's). One
partition writes the output directly, several write float32 partials (out, natural-log LSE) that
``kernels.triton.ops.merge_states.launch_merge`` reduces at head dim R. ``batch_invariant`` takes fixed
``INVARIANT_SPLIT_SIZE`` partitions and (multi-token) a fixed ``BLOCK_Q``, so no tile depends on the batch.

Numerics: an fp8 e4m3 cache is widened exactly to q's dtype; ``kv_scale`` is folded into the logit scale
(``scale * kv_scale * log2(e)``) and applied once to the normalised output. Softmax in base 2, float32
accumulation, weights cast to q's dtype before ``P c``; LSE returned in natural log, float32.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.triton.common import (check_fp8_supported, check_launch_device, device_sms, mma, next_pow2,
                                   scale_operand)
from kernels.triton.ops.merge_states import MERGE_CHUNK_BELOW, launch_merge
from kernels.triton.ops.paged_decode import INVARIANT_SPLIT_SIZE, SplitPlan, _check_splits, split_blocks_per_sm
from kernels.validate import MLA_MAX_Q_LEN, check_mla, torch_arguments

MLA_MAX_ROWS = 32  # rows (queries x heads) per program: the [rows, R] float32 accumulator stays in registers
# 8 warps, 2 stages, 32-token tiles (16 with an fp8 cache at 32 rows or with several queries: the widening of
# the fp8 tile to q's dtype holds it twice): compiled for sm_90 (ptxas) at R = 512, P = 64 none spills: 16 rows
# take 114 registers (171 fp8, 172 fp8 multi-token), 32 rows 184 (254 fp8); 4 warps would take 194 at 16 rows
# and spill at 32 rows or fp8, and 32-token fp8 tiles spill at 32 rows or multi-token
MLA_WARPS = 8
MLA_BLOCK_N = 32
MLA_RESIDENT_BLOCKS = 2  # 8-warp blocks of 114 registers per SM on sm_90 (1 at 32 rows)
# programs per SM the split plan aims for without a known GPU: one 8-warp program covers an H100's 7.4 warps
# of memory latency (``roofline.timing_model.latency_blocks``); on a GPU ``roofline.specs`` knows, its own figure
MLA_SPLIT_BLOCKS_PER_SM = 1.0
# The split heuristic's traffic budget: a partition writes and the merge reads back its float32 partials
# (2 x rows x R x 4 bytes per head tile), at most this share of the latent bytes the partition reads. At
# DeepSeek's R = 512, P = 64, bfloat16 and 16 heads that is partitions of >= 1,440 tokens (the counted / minimum
# goal, 1.05, leaves the rest for metadata and the query).
MLA_SPLIT_TRAFFIC = 0.04


@triton.jit
def _mla_decode_kernel(
        qn_ptr, qp_ptr, c_ptr, pe_ptr, bt_ptr, sl_ptr, qsl_ptr, out_ptr, lse_ptr,
        s_qnt, s_qnh, s_qnd,  # q_nope [num_tokens, H, R]
        s_qpt, s_qph, s_qpd,  # q_pe [num_tokens, H, P]
        s_cb, s_ct,  # kv_c_cache [num_blocks, block_size, R], last dim contiguous
        s_pb, s_pt,  # k_pe_cache [num_blocks, block_size, P], last dim contiguous
        s_bts, s_btb, s_sl, s_qsl,  # block_table [num_seqs, max_blocks], seq_lens, query_start_loc
        s_op, s_ot, s_oh, s_od,  # out [parts, num_tokens, H, R] (s_op = 0 when written directly)
        s_lp, s_lt, s_lh,  # lse [parts, num_tokens, H]
        qk_scale, out_scale, kv_scale_ptr, part_len, num_parts, block_size, num_heads,
        RANK: tl.constexpr, ROPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        MULTI_TOKEN: tl.constexpr, FIXED_PART: tl.constexpr, KV_SCALE_PTR: tl.constexpr):
    seq = tl.program_id(0)
    tile = tl.program_id(1)
    part = tl.program_id(2)
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    if KV_SCALE_PTR:  # a tensor kv_scale is read here, on the device (no host copy)
        ks = tl.load(kv_scale_ptr).to(tl.float32)
        qk_scale = qk_scale * ks
        out_scale = ks

    seq_len = tl.load(sl_ptr + seq.to(tl.int64) * s_sl).to(tl.int32)
    if MULTI_TOKEN:
        q_lo = tl.load(qsl_ptr + seq.to(tl.int64) * s_qsl).to(tl.int32)
        q_len = tl.load(qsl_ptr + (seq + 1).to(tl.int64) * s_qsl).to(tl.int32) - q_lo
    else:
        q_lo = seq
        q_len = 1
    if FIXED_PART:
        plen = part_len
    else:
        plen = tl.cdiv(seq_len, num_parts)
    start = part * plen
    end = tl.minimum(start + plen, seq_len)

    rows = tl.arange(0, BLOCK_M)
    j = rows // BLOCK_H  # the row's query within the sequence
    heads = tile * BLOCK_H + rows % BLOCK_H
    row_ok = (j < q_len) & (heads < num_heads)
    token = (q_lo + j).to(tl.int64)
    pos = seq_len - q_len + j  # the row's query position: it sees keys 0..pos
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = tl.arange(0, BLOCK_P)
    r_ok = offs_r < RANK  # constexpr bounds: fold away at a power of two
    p_ok = offs_p < ROPE
    qn = tl.load(qn_ptr + token[:, None] * s_qnt + heads[:, None] * s_qnh + offs_r[None, :] * s_qnd,
                 mask=row_ok[:, None] & r_ok[None, :], other=0.0)
    qp = tl.load(qp_ptr + token[:, None] * s_qpt + heads[:, None] * s_qph + offs_p[None, :] * s_qpd,
                 mask=row_ok[:, None] & p_ok[None, :], other=0.0)

    bt_row = bt_ptr + seq.to(tl.int64) * s_bts
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    poisoned = tl.zeros((BLOCK_M,), tl.int1)  # multi-token: the row sees a key whose c holds NaN
    for t0 in range(start, end, BLOCK_N):
        tok = t0 + offs_n
        valid = tok < end  # owned slots only: nothing past seq_len is read
        block = tl.load(bt_row + (tok // block_size) * s_btb, mask=valid, other=0).to(tl.int64)
        slot = (tok % block_size).to(tl.int64)
        c = tl.load(c_ptr + block[:, None] * s_cb + slot[:, None] * s_ct + offs_r[None, :],
                    mask=valid[:, None] & r_ok[None, :], other=0.0).to(qn.dtype)  # fp8 -> q dtype is exact
        kp = tl.load(pe_ptr + block[:, None] * s_pb + slot[:, None] * s_pt + offs_p[None, :],
                     mask=valid[:, None] & p_ok[None, :], other=0.0).to(qn.dtype)
        s = mma(qn, tl.trans(c), tl.zeros((BLOCK_M, BLOCK_N), tl.float32))
        s = mma(qp, tl.trans(kp), s) * qk_scale
        if MULTI_TOKEN:
            visible = valid[None, :] & (tok[None, :] <= pos[:, None])
        else:
            visible = valid[None, :] & (rows[:, None] >= 0)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet stays empty
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MULTI_TOKEN:
            c_nan = tl.max((c != c).to(tl.int32), 1) > 0
            poisoned = poisoned | (tl.max((visible & c_nan[None, :]).to(tl.int32), 1) > 0)
            c = tl.where(c != c, 0.0, c)
        acc = mma(p.to(qn.dtype), c, acc * alpha[:, None])
        m_i = m_new

    # l_i is exactly 0 only for a row that saw no key in this partition; `== 0` is False for NaN, so a NaN read
    # anywhere reaches out and LSE instead of "no visible key"
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    poison = tl.sum(acc, 1) * 0.0  # 0, or NaN when a value the row read holds NaN: its LSE is NaN too
    out = tl.where(empty[:, None], 0.0, acc * (out_scale / l_safe)[:, None] + poison[:, None])
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * LN2 + poison)
    if MULTI_TOKEN:
        out = tl.where(poisoned[:, None], float("nan"), out)
        lse = tl.where(poisoned, float("nan"), lse)
    o_base = out_ptr + part.to(tl.int64) * s_op
    tl.store(o_base + token[:, None] * s_ot + heads[:, None] * s_oh + offs_r[None, :] * s_od,
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & r_ok[None, :])
    l_base = lse_ptr + part.to(tl.int64) * s_lp
    tl.store(l_base + token * s_lt + heads * s_lh, lse, mask=row_ok)


def mla_tiles(num_heads: int, rank: int, rope: int, max_q_len: int = 1, *, fp8: bool = False,
              multi_token: bool = False) -> dict:
    """The launch's tiles: ``BLOCK_Q`` queries (the longest query run, a power of two) x ``BLOCK_H`` heads =
    ``BLOCK_M`` rows (at least 16, the MMA's M; at most ``MLA_MAX_ROWS``), ``MLA_BLOCK_N`` tokens per step (half
    that for an fp8 cache at 32 rows or multi-token), ``MLA_WARPS`` warps."""
    block_q = next_pow2(max_q_len)
    block_h = max(1, min(next_pow2(num_heads), MLA_MAX_ROWS // block_q))
    block_m = max(16, block_q * block_h)
    block_n = MLA_BLOCK_N // 2 if fp8 and (block_m > 16 or multi_token) else MLA_BLOCK_N
    return dict(BLOCK_R=next_pow2(rank), BLOCK_P=max(16, next_pow2(rope)), BLOCK_H=block_h, BLOCK_M=block_m,
                BLOCK_N=block_n, num_warps=MLA_WARPS)


def mla_min_split(rows: int, rank: int, rope: int, kv_bytes: int, tile: int) -> int:
    """The shortest partition the heuristic makes: its partials' traffic within ``MLA_SPLIT_TRAFFIC`` of the
    latent bytes it reads, a multiple of ``tile`` tokens."""
    tokens = 2 * rows * rank * 4 / (MLA_SPLIT_TRAFFIC * (rank + rope) * kv_bytes)
    return max(-(-int(tokens) // tile) * tile, tile)


def mla_split_plan(max_span: int, num_seqs: int, num_tiles: int, *, num_splits=None, split_size=None,
                   num_sms: int, blocks_per_sm: float, tile: int, min_len: int) -> SplitPlan:
    """The partitioning a call uses: ``split_size`` partitions of that many tokens, ``num_splits`` near-equal
    ones, else enough partitions of at least ``min_len`` tokens (``mla_min_split``) for ``num_sms *
    blocks_per_sm`` programs when the batch alone does not reach it (as ``paged_decode``'s heuristic). Pure
    python: no device is touched."""
    if split_size is not None:
        return SplitPlan(max(-(-max_span // split_size), 1), split_size)
    if num_splits is not None:
        return SplitPlan(num_splits, 0)
    target = math.ceil(num_sms * max(float(blocks_per_sm), 1.0))
    base = max(num_seqs * num_tiles, 1)
    if base >= target or max_span <= min_len:
        return SplitPlan(1, 0)
    want = -(-target // base)
    part_len = max(-(-max_span // want) // tile * tile, min_len)
    num_parts = -(-max_span // part_len)
    return SplitPlan(1, 0) if num_parts <= 1 else SplitPlan(num_parts, part_len)


def mla_blocks_per_sm(device, blocks_per_sm) -> float:
    """The split plan's programs per SM: ``blocks_per_sm`` when given (a number >= 1, else a ValueError naming
    it); on a CUDA device ``roofline.specs`` knows, the latency-covering count of 8-warp programs; else
    ``MLA_SPLIT_BLOCKS_PER_SM``."""
    if blocks_per_sm is not None:
        return split_blocks_per_sm(device, blocks_per_sm)
    if getattr(device, "type", None) == "cuda":
        return _gpu_blocks_per_sm(torch.cuda.get_device_name(device))
    return MLA_SPLIT_BLOCKS_PER_SM


@functools.lru_cache(maxsize=None)
def _gpu_blocks_per_sm(device_name: str) -> float:  # once per GPU model: a timed call does no lookup
    from roofline.specs import match_name
    from roofline.timing_model import latency_blocks

    spec = match_name(device_name)
    return MLA_SPLIT_BLOCKS_PER_SM if spec is None else latency_blocks(spec, MLA_WARPS, MLA_RESIDENT_BLOCKS)


@annotate("mla_decode")
@torch_arguments
def mla_decode(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
               num_splits=None, split_size=None, query_start_loc=None, return_lse=False, num_sms=None,
               blocks_per_sm=None, batch_invariant=False, max_seq_len=None, max_query_len=None, validate=True):
    """Triton ``mla_decode`` (see the contract). ``num_sms``/``blocks_per_sm``: the split heuristic's machine
    (as ``paged_decode``'s). ``batch_invariant``: without ``num_splits``/``split_size``, partitions of
    ``INVARIANT_SPLIT_SIZE`` tokens; with a fixed partition length (it or ``split_size``) and ``query_start_loc``,
    ``BLOCK_Q = MLA_MAX_Q_LEN`` (no tile depends on the batch).

    ``max_seq_len`` / ``max_query_len`` (host ints, bounds of the batch's) size the plan; ``validate=False``
    reads no device value (a tensor ``kv_scale`` is loaded by the kernel) and, without hints, plans for the
    block table's capacity and ``min(num_tokens, MLA_MAX_Q_LEN)`` queries per sequence.
    """
    dims = check_mla(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, query_start_loc, scale=scale,
                     kv_scale=kv_scale, validate=validate, max_seq_len=max_seq_len, max_query_len=max_query_len)
    _check_splits(num_splits, split_size, dims.max_seq_len)
    if batch_invariant and num_splits is None and split_size is None:
        split_size = INVARIANT_SPLIT_SIZE
    for name, t in (("q_nope", q_nope), ("q_pe", q_pe), ("kv_c_cache", kv_c_cache), ("k_pe_cache", k_pe_cache),
                    ("block_table", block_table), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        if t is not None:
            check_launch_device(name, t)
    if dims.kv_is_fp8:
        check_fp8_supported("kv_c_cache", kv_c_cache.device)
    sms = device_sms(q_nope.device, num_sms)
    per_sm = mla_blocks_per_sm(q_nope.device, blocks_per_sm)
    # a fixed partition length promises a sequence's bits independent of its batch: then the rows tile must not
    # depend on the batch's longest query run either
    fixed = split_size is not None
    max_q = MLA_MAX_Q_LEN if (fixed and dims.multi_token) else dims.max_query_len
    tiles = mla_tiles(dims.num_heads, dims.rank, dims.rope, max_q, fp8=dims.kv_is_fp8, multi_token=dims.multi_token)
    num_tiles = triton.cdiv(dims.num_heads, tiles["BLOCK_H"])
    rows = min(tiles["BLOCK_M"], max_q * dims.num_heads)
    min_len = mla_min_split(rows, dims.rank, dims.rope, kv_c_cache.element_size(), tiles["BLOCK_N"])
    plan = mla_split_plan(dims.max_seq_len, dims.num_seqs, num_tiles, num_splits=num_splits, split_size=split_size,
                          num_sms=sms, blocks_per_sm=per_sm, tile=tiles["BLOCK_N"], min_len=min_len)

    dev = q_nope.device
    out = torch.empty((dims.num_tokens, dims.num_heads, dims.rank), dtype=q_nope.dtype, device=dev)
    lse = torch.empty((dims.num_tokens, dims.num_heads), dtype=torch.float32, device=dev)
    if dims.num_seqs == 0 or dims.num_tokens == 0:
        return (out, lse) if return_lse else out
    if plan.num_parts == 1:
        p_out, p_lse = out.unsqueeze(0), lse.unsqueeze(0)
    else:
        p_out = torch.empty((plan.num_parts, *out.shape), dtype=torch.float32, device=dev)
        p_lse = torch.empty((plan.num_parts, *lse.shape), dtype=torch.float32, device=dev)
    ks, ks_ptr, ks_dev = scale_operand(kv_scale, q_nope, "kv_scale", validate)
    qsl = query_start_loc if dims.multi_token else seq_lens  # a placeholder the kernel never reads
    grid = lambda META: (dims.num_seqs, num_tiles, plan.num_parts)  # noqa: E731
    _mla_decode_kernel[grid](
        q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, qsl, p_out, p_lse,
        *q_nope.stride(), *q_pe.stride(), *kv_c_cache.stride()[:2], *k_pe_cache.stride()[:2],
        *block_table.stride(), seq_lens.stride(0), qsl.stride(0), *p_out.stride(), *p_lse.stride(),
        dims.scale * ks * 1.4426950408889634, ks, ks_ptr, plan.part_len, plan.num_parts, dims.block_size,
        dims.num_heads,
        RANK=dims.rank, ROPE=dims.rope, BLOCK_R=tiles["BLOCK_R"], BLOCK_P=tiles["BLOCK_P"],
        BLOCK_H=tiles["BLOCK_H"], BLOCK_M=tiles["BLOCK_M"], BLOCK_N=tiles["BLOCK_N"],
        MULTI_TOKEN=dims.multi_token, FIXED_PART=plan.part_len > 0, KV_SCALE_PTR=ks_dev,
        num_warps=tiles["num_warps"], num_stages=2)
    if plan.num_parts > 1:
        launch_merge(p_out, p_lse, out, lse, cut_head_dim=dims.num_tokens * dims.num_heads < MERGE_CHUNK_BELOW)
    return (out, lse) if return_lse else out
