"""Dense grouped GEMM (float16 / bfloat16 / float32), and the tile -> group mapping all grouped GEMMs share.

``y[rows of e] = a[rows of e] @ w[e].T`` for every expert e in ONE launch. Experts stay where they are in
memory (no padding of a group to a tile multiple): a small device-side table, built with a few torch ops from
``group_offsets``, lists the row tiles of all groups back to back,

    tile i -> (expert e, first row, end row of e)        ceil(rows_e / BLOCK_M) tiles for expert e

and program (i, j) computes rows ``[first, min(first + BLOCK_M, end))`` x columns ``[j * BLOCK_N, ...)``.
Empty experts own no tile; T = 0 launches nothing. The table is built on the device, so no group offset is
read on the host: a validated call (host offsets at hand) sizes the grid to the exact tile count; with
``validate=False`` the grid is ``max_row_tiles(T, E, BLOCK_M)``, a bound from shapes alone, and the surplus
entries of the table are empty tiles (first = end) whose programs return at once. ``grouped_gemm_int4`` and ``grouped_gemm_fp8`` use the same
table and the same ``load_tile`` helper, and for a split-K plan (``kernels.triton.gemm_configs.split_k``) the
same workspace and in-order reduction (``split_workspace``, ``sum_splits``).
"""
from __future__ import annotations


import numpy as np
import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.validate import torch_arguments
from kernels.reference.gemm import check_dense
from kernels.triton.common import check_launch_device, mma
from kernels.triton.gemm_configs import select_config

TORCH_OUT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def num_row_tiles(offsets: np.ndarray, block_m: int) -> int:
    """Total row tiles over all groups (host offsets): sum of ceil(rows_e / BLOCK_M)."""
    return int((-(-np.diff(offsets) // block_m)).sum())


def max_row_tiles(num_rows: int, num_groups: int, block_m: int) -> int:
    """An upper bound on ``num_row_tiles`` from shapes alone: each group adds at most one partial tile, and no
    tile is empty, so ``min(T, (T + E * (BLOCK_M - 1)) // BLOCK_M)``."""
    return min(num_rows, (num_rows + num_groups * (block_m - 1)) // block_m)


def row_tile_count(offs, num_rows: int, num_groups: int, block_m: int) -> int:
    """The grid's row-tile count: exact from validated host offsets, else the shape bound ``max_row_tiles``."""
    return num_row_tiles(offs, block_m) if offs is not None else max_row_tiles(num_rows, num_groups, block_m)


def group_tile_table(group_offsets: torch.Tensor, block_m: int, num_tiles: int, device) -> torch.Tensor:
    """int32 ``[3, num_tiles]``: (expert, first row, end row) of each row tile, computed on ``device`` with torch
    ops (no host read). Entries past the real tiles (a bound-sized table) are empty: first = end = T."""
    offs = torch.as_tensor(group_offsets, device=device).to(torch.int64)
    rows = offs[1:] - offs[:-1]
    tiles = (rows + block_m - 1) // block_m
    ends = torch.cumsum(tiles, 0)  # tile index just past expert e's tiles
    i = torch.arange(num_tiles, device=device, dtype=torch.int64)
    e = torch.searchsorted(ends, i, right=True)  # the expert whose tiles cover i (empty experts are skipped)
    surplus = e >= rows.shape[0]  # i at or past the total tile count
    e = torch.clamp(e, max=rows.shape[0] - 1)
    first = torch.where(surplus, offs[-1], offs[e] + (i - (ends[e] - tiles[e])) * block_m)
    end = torch.where(surplus, offs[-1], offs[e + 1])
    return torch.stack([e, first, end]).to(torch.int32).contiguous()


@triton.jit
def load_tile(tiles_ptr, num_tiles, pid_m):
    """(expert, first row, end row) of row tile ``pid_m``."""
    e = tl.load(tiles_ptr + pid_m)
    first = tl.load(tiles_ptr + num_tiles + pid_m)
    end = tl.load(tiles_ptr + 2 * num_tiles + pid_m)
    return e, first, end


def split_workspace(y: torch.Tensor, num_splits: int) -> tuple[torch.Tensor, int]:
    """Where the GEMM kernel writes (a ``[T, N]`` view, its split stride): ``y`` itself (stride 0) without a
    split, else a fresh float32 ``[S, T, N]`` workspace whose S slices ``sum_splits`` adds into ``y``."""
    if num_splits == 1:
        return y, 0
    t, n = y.shape
    ws = torch.empty((num_splits, t, n), dtype=torch.float32, device=y.device)
    return ws, ws.stride(0)


@triton.jit
def _sum_splits_kernel(ws_ptr, y_ptr, T, N, stride_ws, stride_wm, stride_ym, NUM_SPLITS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``y[m, n] = ws[0, m, n] + ws[1, m, n] + ...`` in float32, slices added in order (deterministic)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < T)[:, None] & (cols < N)[None, :]
    offs = rows.to(tl.int64)[:, None] * stride_wm + cols[None, :]
    acc = tl.load(ws_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, NUM_SPLITS):
        acc += tl.load(ws_ptr + s * stride_ws + offs, mask=mask, other=0.0)
    y_offs = rows.to(tl.int64)[:, None] * stride_ym + cols[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def sum_splits(ws: torch.Tensor, y: torch.Tensor) -> None:
    """``y = sum over s of ws[s]`` (cast to y's dtype, rounded to nearest even) when ``ws`` is a split workspace."""
    if ws is y:
        return
    num_splits, t, n = ws.shape
    grid = lambda META: (triton.cdiv(t, META["BLOCK_M"]), triton.cdiv(n, META["BLOCK_N"]))  # noqa: E731
    # one row x 256 columns per program: T * N / 256 programs of 4 warps, enough warps in flight for a pass
    # that is pure memory traffic (a [16, 256] tile gave Mixtral w2 32 programs, 1/4 of the SMs)
    _sum_splits_kernel[grid](ws, y, t, n, ws.stride(0), ws.stride(1), y.stride(0), NUM_SPLITS=num_splits,
                             BLOCK_M=1, BLOCK_N=256, num_warps=4)


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, w_ptr, y_ptr, tiles_ptr, num_tiles, N, K,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e, first, end = load_tile(tiles_ptr, num_tiles, pid_m)
    if first >= end:
        return  # a surplus entry of a bound-sized tile table
    rows = first + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < end
    col_ok = cols < N
    # 64-bit offsets: a [T, K] and the weight stack [E, N, K] can pass 2**31 elements.
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + ks[None, :] * stride_ak
    w_ptrs = (w_ptr + e.to(tl.int64) * stride_we + cols.to(tl.int64)[None, :] * stride_wn
              + ks[:, None] * stride_wk)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = mma(a, w, acc)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@annotate("grouped_gemm")
@torch_arguments
def grouped_gemm(a, w, group_offsets, *, out_dtype=None, batch_invariant=False,
                 validate=True):
    """``a [T, K]`` (float16/bfloat16/float32), ``w [E, N, K]`` of a's dtype -> ``[T, N]`` in ``out_dtype``
    (default a's dtype); float32 accumulation (IEEE float32 products for float32 inputs). ``batch_invariant``:
    one tile config for every T, so row i is bitwise the same whatever else is in the call. ``validate=False``:
    no group offset is read on the host (bound-sized grid, see the module docstring)."""
    offs, e, n, k, out_name = check_dense(a, w, group_offsets, out_dtype, validate)
    check_launch_device("a", a)
    t = int(a.shape[0])
    y = torch.empty((t, n), dtype=TORCH_OUT[out_name], device=a.device)
    if t == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_()
    cfg = select_config("dense", t, e, n, k, batch_invariant=batch_invariant)
    num_tiles = row_tile_count(offs, t, e, cfg.BLOCK_M)
    tiles = group_tile_table(group_offsets, cfg.BLOCK_M, num_tiles, a.device)
    grid = lambda META: (num_tiles, triton.cdiv(n, META["BLOCK_N"]))  # noqa: E731
    _grouped_gemm_kernel[grid](
        a, w, y, tiles, num_tiles, n, k,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), y.stride(0), y.stride(1),
        **cfg.launch_kwargs(),
    )
    return y
