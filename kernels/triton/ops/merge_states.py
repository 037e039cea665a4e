"""N-way merge of partial attention states ``(out_s, lse_s)`` over disjoint key sets (flash-decoding's reduce).

``out = sum_s exp(lse_s - lse) * out_s`` with ``lse = log(sum_s exp(lse_s))``, computed against the running
maximum so an LSE of +-200 (or more) never overflows. A partial with LSE ``-inf`` holds no keys: its weight is
exactly 0 and its ``out`` (possibly NaN) is never multiplied in. All partials empty: out 0, lse ``-inf``. A
partial with LSE NaN or ``+inf`` makes the row's out and LSE NaN.

One program per (token, head) loops over the S partials: S is a runtime value, so any number of partitions
works without recompiling. ``paged_decode`` reuses ``launch_merge`` for its split-KV partials; with fewer than
``MERGE_CHUNK_BELOW`` (sequence, query head) rows (a split decode of one or a few sequences) it has the head dim
cut too (``cut_head_dim``), in chunks of ``MERGE_BLOCK_D`` columns: 4x the programs at D = 128 to keep loads in
flight, each chunk re-reading its row's S LSEs (the same math per element: the same bits).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.triton.common import check_launch_device, next_pow2
from kernels.validate import check_merge_states, torch_arguments

OUT_DTYPES = ("float16", "bfloat16", "float32")
MERGE_BLOCK_D = 32  # head-dim columns per merge program when the rows are few: one warp's lanes
MERGE_CHUNK_BELOW = 1024  # decode rows under which the merge cuts the head dim (8 one-warp programs per SM of 132)


@triton.jit
def _merge_kernel(outs_ptr, lses_ptr, out_ptr, lse_ptr, num_parts,
                  s_os, s_ot, s_oh, s_od,  # outs [S, T, H, D]
                  s_ls, s_lt, s_lh,  # lses [S, T, H]
                  s_mt, s_mh, s_md,  # out [T, H, D]
                  s_et, s_eh,  # lse [T, H]
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    lse_base = lses_ptr + tok * s_lt + head * s_lh
    out_base = outs_ptr + tok * s_ot + head * s_oh + offs_d * s_od

    # pass 1: the largest LSE (the -inf of an empty partial never wins unless all are empty)
    # (a partial with lse NaN or +inf poisons the row: counted apart, never left to max's NaN rules)
    m = tl.full((), float("-inf"), tl.float32)
    poisoned = tl.zeros((), tl.int32)
    lse_ptrs = lse_base
    for _ in range(0, num_parts):
        l_s = tl.load(lse_ptrs).to(tl.float32)
        bad = (l_s != l_s) | (l_s == float("inf"))
        poisoned += bad.to(tl.int32)
        m = tl.maximum(m, tl.where(bad, float("-inf"), l_s))
        lse_ptrs += s_ls  # pointer arithmetic is 64-bit: S * T * H * D may pass 2**31
    m_safe = tl.where(m == float("-inf"), 0.0, m)

    # pass 2: weights exp(lse_s - m) in (0, 1]; an empty partial's weight is exactly 0 and its out unread
    total = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    lse_ptrs = lse_base
    out_ptrs = out_base
    for _ in range(0, num_parts):
        l_s = tl.load(lse_ptrs).to(tl.float32)
        w = tl.exp(tl.where((l_s != l_s) | (l_s == float("inf")), float("-inf"), l_s) - m_safe)
        if w > 0:  # an empty partial's out (NaN allowed) is not even loaded
            acc += w * tl.load(out_ptrs, mask=mask_d, other=0.0).to(tl.float32)
            total += w
        lse_ptrs += s_ls
        out_ptrs += s_os

    nonempty = total > 0
    out = tl.where(nonempty, acc / tl.where(nonempty, total, 1.0), 0.0)
    lse = tl.where(nonempty, m_safe + tl.log(tl.where(nonempty, total, 1.0)), float("-inf"))
    out = tl.where(poisoned > 0, float("nan"), out)
    lse = tl.where(poisoned > 0, float("nan"), lse)
    tl.store(out_ptr + tok * s_mt + head * s_mh + offs_d * s_md, out.to(out_ptr.dtype.element_ty), mask=mask_d)
    if tl.program_id(2) == 0:
        tl.store(lse_ptr + tok * s_et + head * s_eh, lse)


def launch_merge(outs: torch.Tensor, lses: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, *,
                 cut_head_dim: bool = False) -> None:
    """Merge ``outs [S, T, H, D]``/``lses [S, T, H]`` into preallocated ``out [T, H, D]``/``lse [T, H]``;
    ``cut_head_dim``: one program per ``MERGE_BLOCK_D`` columns of a row (see the module docstring).

    No validation: callers (``merge_states``, ``paged_decode``) have checked shapes and devices.
    """
    num_parts, num_tokens, num_heads, head_dim = outs.shape
    if num_tokens == 0 or num_heads == 0:
        return
    block_d = next_pow2(head_dim)
    if cut_head_dim:
        block_d = min(block_d, MERGE_BLOCK_D)
    grid = lambda META: (num_tokens, num_heads, triton.cdiv(head_dim, block_d))  # noqa: E731
    _merge_kernel[grid](outs, lses, out, lse, num_parts,
                        *outs.stride(), *lses.stride(), *out.stride(), *lse.stride(),
                        HEAD_DIM=head_dim, BLOCK_D=block_d, num_warps=1 if block_d <= 128 else 2)


@annotate("merge_states")
@torch_arguments
def merge_states(outs: torch.Tensor, lses: torch.Tensor, *, validate: bool = True):
    """Triton ``merge_states``: returns ``(out [T, H, D] in outs' dtype, lse [T, H] float32)``.

    Every check reads only shapes, dtypes and devices, so ``validate`` changes nothing (it is accepted, as by every
    launcher here)."""
    check_merge_states(outs, lses, OUT_DTYPES)
    check_launch_device("outs", outs)
    out = torch.empty(outs.shape[1:], dtype=outs.dtype, device=outs.device)
    lse = torch.empty(lses.shape[1:], dtype=torch.float32, device=outs.device)
    launch_merge(outs, lses, out, lse)
    return out, lse
