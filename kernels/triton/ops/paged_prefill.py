"""Varlen causal paged attention (chunked prefill), FlashAttention-2 style, in Triton.

One program owns one (query tile, KV head) pair. A query tile is BLOCK_Q consecutive query tokens of one
sequence times the GROUP query heads that share the KV head, packed into the BLOCK_M rows of the matmul (row
``r`` is token ``r // GROUP``, head ``r % GROUP``; rows past ``BLOCK_Q * GROUP`` idle), so every K/V tile is
loaded once for the whole GQA group, whatever the ratio.

Programs map to (sequence, tile) on the device: sequence ``i`` owns tiles
``[qsl[i] // BLOCK_Q + i, qsl[i + 1] // BLOCK_Q + i + 1)``, so a binary search over ``query_start_loc`` finds a
program's sequence; the grid ``num_tokens // BLOCK_Q + num_seqs`` covers every tile, and the few programs past
a sequence's last query exit at once. No host loop over sequences, no host-side tile table.

Keys are streamed BLOCK_N tokens at a time with an online softmax in base 2 (``scale * log2(e)`` folded into one
multiply of the float32 logits). Each token's physical slot is gathered through the block table, so any
block_size (1..256, powers of two or not) works. The key loop runs only over tiles that hold a key some row of
the query tile can see: from the tile holding the first query's window start to the tile holding the last
query's own position; tiles above the causal diagonal or entirely before the window are never loaded.
Within a tile, lanes past the last visible key (so past ``seq_len``) are masked off in the load itself, so
slots and block-table entries a sequence does not own are never read.

KV split (``prefill_splits``): a grid too small to fill the GPU (a 512-token chunk of one Llama-3-8B sequence is
136 programs, at one resident block per SM on sm_90: two waves on 132 SMs, the second nearly empty) cuts each
tile's own key range into ``num_splits`` equal runs of whole key tiles, grid axis 2. Each split writes a float32
partial (out, natural-log LSE) for its rows, and ``kernels.triton.ops.merge_states.launch_merge`` reduces them: a split
that sees no key of a row writes LSE ``-inf`` and merges as an exact no-op; a NaN it saw poisons the row as it
would unsplit. The extra traffic is the partials, ``2 * S * num_tokens * num_q_heads * head_dim * 4`` bytes
written and read. The plan uses host values only (grid size, the ``max_seq_len`` bound, the SM count), so
``validate=False`` with hints plans as ``validate=True``; ``batch_invariant`` never splits.

Attention sinks (``sinks [num_q_heads]``, float32): split 0 of every row starts its online softmax from the sink
(running max ``sinks[h] * log2(e)``, running sum 1, nothing accumulated), the other splits from ``-inf``, so the
sink is counted once whatever the KV split; a NaN or ``+inf`` sink is NaN in its head's out and LSE.

float8_e4m3fn caches: the fp8 values are widened exactly to q's dtype; ``k_scale`` is folded into the logit
scale and ``v_scale`` applied to the float32 output, so dequantization adds no rounding.
Cache offsets are computed in int64 (a cache may hold more than 2**31 elements).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.triton.common import (check_fp8_supported, check_launch_device, device_sms, mma, next_pow2,
                                   scale_operand)
from kernels.triton.ops.merge_states import launch_merge
from kernels.validate import check_attention, require, torch_arguments

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
INVARIANT_Q_LEN = 1 << 16  # batch_invariant plans every call as if its longest chunk were this long (the cap)
# The KV split plan (``prefill_splits``), a table a GPU run can retune:
PREFILL_BLOCKS_PER_SM = 1  # resident blocks per SM of the 8-warp BLOCK_M = 128 tile compiled for sm_90 (212 regs)
SPLIT_BELOW_WAVES = 2  # split a grid under this many waves of resident slots (its last wave leaves most SMs idle)
SPLIT_WAVES = 4  # ... into about this many waves: the last wave's idle SMs then cost at most about 1/4
MIN_SPLIT_KEYS = 1024  # keys per split at least: the partials (4-byte rows) stay small next to the K/V they save
MAX_SPLITS = 8  # the most splits (each adds a float32 partial of the output, written once and read once)


@triton.jit
def _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    """The sequence owning global query tile ``tile``: the last i with ``qsl[i] // BLOCK_Q + i <= tile``."""
    lo = tl.zeros((), dtype=tl.int32)
    hi = tl.zeros((), dtype=tl.int32) + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid).to(tl.int32) // BLOCK_Q + mid
        if first_tile <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _soft_cap(s, soft_cap):
    """``soft_cap * tanh(s / soft_cap)`` via ``exp(-2|x|)`` in (0, 1]: no overflow for any finite s."""
    x = s / soft_cap
    e = tl.exp2(tl.abs(x) * (-2.0 * 1.4426950408889634))
    t = (1.0 - e) / (1.0 + e)
    return soft_cap * tl.where(x < 0, -t, t)


@triton.jit
def _paged_prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    block_table_ptr, seq_lens_ptr, query_start_loc_ptr,
    num_seqs, logit_scale, soft_cap, sliding_window, v_scale, k_scale_ptr, v_scale_ptr, sinks_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_lt, stride_os, stride_ls, num_splits,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_WINDOW: tl.constexpr, USE_SOFT_CAP: tl.constexpr, KV_FP8: tl.constexpr, RETURN_LSE: tl.constexpr,
    K_SCALE_PTR: tl.constexpr, V_SCALE_PTR: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    tile = tl.program_id(0)
    if K_SCALE_PTR:  # a tensor k_scale is read here, on the device (no host copy)
        logit_scale = logit_scale * tl.load(k_scale_ptr).to(tl.float32)
    if V_SCALE_PTR:
        v_scale = tl.load(v_scale_ptr).to(tl.float32)
    kv_head = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + seq + 1).to(tl.int32) - q_start
    local_tile = tile - (q_start // BLOCK_Q + seq)
    first_q = local_tile * BLOCK_Q
    if first_q >= q_len:
        return  # a spare tile of this sequence (or an empty chunk)
    seq_len = tl.load(seq_lens_ptr + seq).to(tl.int32)
    context = seq_len - q_len  # absolute position of the chunk's first query

    rows = tl.arange(0, BLOCK_M)
    q_idx = first_q + rows // GROUP  # query index within the chunk
    heads = kv_head * GROUP + rows % GROUP
    row_ok = (rows // GROUP < BLOCK_Q) & (q_idx < q_len)
    positions = context + q_idx
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_ok = dims < HEAD_DIM

    token = (q_start + q_idx).to(tl.int64)
    q_off = token[:, None] * stride_qt + heads[:, None].to(tl.int64) * stride_qh + dims[None, :]
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # Keys this tile can see: [window start of its first query, its last query's position] (inclusive).
    last_q = tl.minimum(first_q + BLOCK_Q, q_len) - 1
    kv_end = context + last_q + 1
    kv_begin = 0
    if USE_WINDOW:
        kv_begin = tl.maximum(context + first_q - sliding_window + 1, 0)
    kv_first_tile = (kv_begin // BLOCK_N) * BLOCK_N
    # this program's split of the key tiles: num_splits equal runs (the last ones may be short or empty)
    split = tl.program_id(2)
    split_tiles = tl.cdiv(tl.cdiv(kv_end - kv_first_tile, BLOCK_N), num_splits)
    kv_lo = kv_first_tile + split * split_tiles * BLOCK_N
    kv_hi = tl.minimum(kv_lo + split_tiles * BLOCK_N, kv_end)
    out_ptr += split.to(tl.int64) * stride_os  # a split's partial (stride 0 unsplit)
    lse_ptr += split.to(tl.int64) * stride_ls

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    poisoned = tl.zeros([BLOCK_M], dtype=tl.int1)  # the row sees a key whose value holds NaN
    if HAS_SINKS:  # the sink opens split 0's softmax (a logit with no value); the other splits open at -inf
        sink = tl.load(sinks_ptr + heads, mask=row_ok, other=float("-inf"))
        sink = tl.where(split == 0, sink, float("-inf"))  # counted once per row: in split 0 only
        poisoned = (sink != sink) | (sink == float("inf"))  # a NaN or +inf sink: NaN in its head's out and LSE
        m_i = sink * 1.4426950408889634
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)  # exp2(sink - m_i); a -inf start is rescaled to 0
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt
    for kv_start in range(kv_lo, kv_hi, BLOCK_N):
        keys = kv_start + tl.arange(0, BLOCK_N)
        key_ok = keys < kv_end  # <= the last query's position < seq_len: owned slots only
        block = tl.load(bt_row + keys // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        slot = keys % BLOCK_SIZE
        k_off = block * stride_kb + slot * stride_ks + kv_head * stride_kh
        v_off = block * stride_vb + slot * stride_vs + kv_head * stride_vh
        k = tl.load(k_ptr + k_off[None, :] + dims[:, None], mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
        if KV_FP8:
            k = k.to(q.dtype)  # exact: every e4m3 value is a float16/bfloat16/float32 value
        s = mma(q, k, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
        if USE_SOFT_CAP:
            s = _soft_cap(s * logit_scale, soft_cap) * 1.4426950408889634
        else:
            s = s * logit_scale  # logit_scale = scale * k_scale * log2(e) here
        visible = row_ok[:, None] & key_ok[None, :] & (keys[None, :] <= positions[:, None])
        if USE_WINDOW:
            visible = visible & (keys[None, :] > positions[:, None] - sliding_window)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays empty
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + v_off[:, None] + dims[None, :], mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        if KV_FP8:
            v = v.to(q.dtype)
        # a NaN value poisons only the rows that see its key (0 * NaN in P @ V would reach the rows above it too)
        v_nan = tl.max((v != v).to(tl.int32), axis=1) > 0
        poisoned = poisoned | (tl.max((visible & v_nan[None, :]).to(tl.int32), axis=1) > 0)
        v = tl.where(v != v, 0.0, v)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new

    # l_i is exactly 0 only for a row that saw no key; `== 0` is False for NaN, so a NaN logit stays NaN
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]  # a row that saw no key: acc = 0, out = 0
    if KV_FP8:
        out = out * v_scale
    out = tl.where(poisoned[:, None], float("nan"), out)
    o_off = token[:, None] * stride_ot + heads[:, None].to(tl.int64) * stride_oh + dims[None, :]
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    if RETURN_LSE:
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        lse = tl.where(poisoned, float("nan"), lse)
        tl.store(lse_ptr + token * stride_lt + heads, lse, mask=row_ok)


def prefill_tiles(group: int, head_dim: int, max_q_len: int, batch_invariant: bool = False) -> dict:
    """Tile sizes for a call: BLOCK_M rows = BLOCK_Q tokens x GROUP heads, BLOCK_N keys per step.

    BLOCK_M grows with the longest chunk (a batch of one-token chunks gets 16 rows: no idle rows to pay for),
    up to 128 rows (less for head_dim > 128, where the accumulator is twice as wide, and for MHA or a group that
    is not a power of two); it is at least the group size rounded up to a power of two, so one KV head's whole
    group fits one tile. BLOCK_N and the warp count
    are the largest that compile for sm_90 without register spills (ptxas -v on the gathered K/V tiles; the
    per-token gather costs registers a contiguous FlashAttention tile does not): wide rows get fewer keys.
    ``batch_invariant``: the tiles of the longest chunk whatever ``max_q_len`` is (BLOCK_N, and so a row's key
    reduction order, then never depends on the other chunks in the batch).
    """
    if batch_invariant:
        max_q_len = INVARIANT_Q_LEN
    head_dim_pad = next_pow2(head_dim)
    pow2_group = group & (group - 1) == 0
    if head_dim_pad <= 128:
        cap = 128 if group >= 2 and pow2_group else 64  # MHA and odd groups spill at 128 rows (measured)
    else:
        cap = 64 if group >= 4 else 32
    block_m = max(16, min(cap, next_pow2(group * max(max_q_len, 1))), next_pow2(group))
    if head_dim_pad <= 64:
        block_n, num_warps = 64, 8 if block_m >= 128 else 4
    elif head_dim_pad <= 128:
        block_n, num_warps = (64 if block_m <= 32 else 32), 8
    else:
        block_n, num_warps = (32 if block_m <= 32 else 16), 8
    return dict(BLOCK_M=block_m, BLOCK_Q=max(1, block_m // group), BLOCK_N=block_n, HEAD_DIM_PAD=head_dim_pad,
                num_warps=num_warps, num_stages=2)


def prefill_splits(programs: int, max_span: int, num_sms: int, *, blocks_per_sm: int = PREFILL_BLOCKS_PER_SM) -> int:
    """Splits of each tile's key range for a grid of ``programs`` whose longest key range is ``max_span`` keys.

    A grid of at least ``SPLIT_BELOW_WAVES`` waves of resident slots (``blocks_per_sm * num_sms``) is not split.
    Otherwise ``S = ceil(SPLIT_WAVES * slots / programs)``, at most ``MAX_SPLITS`` and at most
    ``max_span // MIN_SPLIT_KEYS`` (so a short context never splits). Pure python: no device is touched.
    """
    slots = max(int(blocks_per_sm), 1) * max(int(num_sms), 1)
    programs = max(int(programs), 1)
    if programs >= SPLIT_BELOW_WAVES * slots:
        return 1
    want = -(-SPLIT_WAVES * slots // programs)
    return max(1, min(want, MAX_SPLITS, int(max_span) // MIN_SPLIT_KEYS))


def _check_num_splits(num_splits) -> None:
    require(num_splits is None or (isinstance(num_splits, int) and not isinstance(num_splits, bool)
                                   and 1 <= num_splits <= 65535), "num_splits",
            f"must be None or an int in [1, 65535], got {num_splits!r}")


@annotate("paged_prefill")
@torch_arguments
def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, sliding_window=None,
                  soft_cap=None, k_scale=1.0, v_scale=1.0, return_lse=False, batch_invariant=False, max_query_len=None,
                  max_seq_len=None, num_splits=None, num_sms=None, validate=True, sinks=None):
    """Varlen causal attention over the paged cache; see ``kernels.reference.paged_prefill`` for the math.
    ``batch_invariant``: fixed tiles (``prefill_tiles``), so a query row's out and LSE are bitwise independent
    of the other sequences, of how its sequence is cut into chunks, and of its position inside its chunk.

    ``max_query_len`` (host int, the longest chunk or an upper bound) picks the tile; ``max_seq_len`` (the longest
    ``seq_len`` or a bound) caps the KV split. ``validate=False`` reads no device value (a tensor
    ``k_scale``/``v_scale`` is loaded by the kernel); without hints it plans for ``num_tokens`` query rows and
    ``max_blocks * block_size`` keys (shape bounds). ``num_splits`` forces the KV split (``prefill_splits`` picks
    it otherwise, for ``num_sms`` SMs: the GPU's, or 132 without one); this project's extras, not the contract's.
    """
    dims = check_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=scale,
                           sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale,
                           validate=validate, max_seq_len=max_seq_len, max_query_len=max_query_len, sinks=sinks)
    _check_num_splits(num_splits)
    sms = device_sms(q.device, num_sms)
    check_launch_device("q", q)
    if sinks is not None:
        check_launch_device("sinks", sinks)
        sinks = sinks.contiguous()
    if dims.kv_is_fp8:
        check_fp8_supported("k_cache", k_cache.device)
    # the kernel assumes unit stride along q's head_dim, a block-table row and the 1-D metadata (no-ops if so)
    q = q if q.stride(-1) == 1 else q.contiguous()
    block_table = block_table if block_table.stride(-1) == 1 else block_table.contiguous()
    seq_lens, query_start_loc = seq_lens.contiguous(), query_start_loc.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if return_lse else out
    if dims.num_tokens > 0:
        grid, args, meta, parts = launch_arguments(
            dims, q, k_cache, v_cache, block_table, seq_lens, query_start_loc, out, lse,
            sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale, return_lse=return_lse,
            batch_invariant=batch_invariant, validate=validate, num_splits=num_splits, num_sms=sms, sinks=sinks)
        _paged_prefill_kernel[grid](*args, **meta)
        if parts is not None:
            merged_lse = lse if return_lse else torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
            launch_merge(*parts, out, merged_lse)
    return (out, lse) if return_lse else out


def launch_arguments(dims, q, k_cache, v_cache, block_table, seq_lens, query_start_loc, out, lse, *, sliding_window,
                     soft_cap, k_scale, v_scale, return_lse, batch_invariant=False, validate=True, num_splits=None,
                     num_sms=None, sinks=None):
    """``(grid, args, meta, parts)`` of the kernel launch for a checked call (also used to compile for a GPU in CI);
    ``parts`` is ``(partial outs [S, T, H, D], partial LSEs [S, T, H])`` float32 workspaces for a split launch
    (the caller merges them into ``out``), else None."""
    ks, ks_ptr, ks_dev = scale_operand(k_scale if dims.kv_is_fp8 else 1.0, q, "k_scale", validate)
    vs, vs_ptr, vs_dev = scale_operand(v_scale if dims.kv_is_fp8 else 1.0, q, "v_scale", validate)
    meta = prefill_tiles(dims.group, dims.head_dim, dims.max_query_len, batch_invariant)
    logit_scale = dims.scale * ks * (1.0 if soft_cap is not None else LOG2E)
    programs = (dims.num_tokens // meta["BLOCK_Q"] + dims.num_seqs) * dims.num_kv_heads
    span = dims.max_seq_len if sliding_window is None else min(dims.max_seq_len, int(sliding_window) + meta["BLOCK_Q"])
    if num_splits is None:
        num_splits = 1 if batch_invariant else prefill_splits(programs, span, num_sms or 1)
    parts = None
    if num_splits > 1:
        parts = (torch.empty((num_splits, *q.shape), dtype=torch.float32, device=q.device),
                 torch.empty((num_splits, *q.shape[:2]), dtype=torch.float32, device=q.device))
        out, lse, return_lse = parts[0], parts[1], True
    grid = lambda META: (dims.num_tokens // META["BLOCK_Q"] + dims.num_seqs, dims.num_kv_heads,  # noqa: E731
                         num_splits)
    args = (
        q, k_cache, v_cache, out, lse,
        block_table, seq_lens, query_start_loc,
        dims.num_seqs, logit_scale, float(soft_cap or 1.0), int(sliding_window or 0), vs, ks_ptr, vs_ptr,
        q if sinks is None else sinks,
        q.stride(0), q.stride(1), out.stride(-3), out.stride(-2), lse.stride(-2),
        out.stride(0) if parts else 0, lse.stride(0) if parts else 0, num_splits,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
    )
    meta.update(HEAD_DIM=dims.head_dim, GROUP=dims.group, BLOCK_SIZE=dims.block_size,
                USE_WINDOW=sliding_window is not None, USE_SOFT_CAP=soft_cap is not None, KV_FP8=dims.kv_is_fp8,
                RETURN_LSE=return_lse, K_SCALE_PTR=ks_dev, V_SCALE_PTR=vs_dev, HAS_SINKS=sinks is not None)
    return grid, args, meta, parts
