"""Grouped GEMMs, defined in float64 numpy: rows ``group_offsets[e]:group_offsets[e + 1]`` of ``a`` use expert e.

    y[rows of e] = a[rows of e] @ w[e].T        w[e] is [N, K] (nn.Linear layout)

``grouped_gemm`` takes a dense ``[E, N, K]`` stack, ``grouped_gemm_int4`` an ``Int4Weight`` (dequantized
exactly), ``grouped_gemm_mxfp4`` an ``Mxfp4Weight`` (dequantized exactly) plus an optional float32 per-expert
bias ``[E, N]`` (``y[rows of e] += bias[e]``), ``grouped_gemm_fp8`` float8 activations with per-token-group scales and an ``Fp8Weight``:

    y[t, n] = sum_k (a_fp8[t, k] * a_scales[t, k // g]) * (w[e, n, k] * w_scale(e, n, k))

Every function returns float64 ``[T, N]``; ``out_dtype`` is checked (it only matters to the kernels), and
``batch_invariant`` is accepted and ignored (it only chooses a kernel's tiles).
"""
from __future__ import annotations

import numpy as np

from kernels.reference._arrays import f64
from kernels.reference.quant import (act_group_size, check_act, check_fp8_weight, check_int4_weight,
                                     check_mxfp4_weight, dequantized_expert)
from kernels.validate import check_ndim, check_same_device, dtype_name, host_ints, is_torch, require

OUT_DTYPES = ("float16", "bfloat16", "float32")


def check_group_offsets(group_offsets, num_experts: int, num_rows: int, validate: bool = True) -> np.ndarray | None:
    """``[E + 1]`` ints, non-decreasing, from 0 to T. Returns them as a host int64 array; with ``validate=False``
    only the shape and dtype are checked (no value is read) and the result is None."""
    check_ndim(group_offsets, 1, "group_offsets", "[E + 1]")
    n_offs = int(group_offsets.shape[0])
    require(n_offs == num_experts + 1, "group_offsets",
            f"needs E + 1 = {num_experts + 1} entries (one per expert, plus one), got {n_offs}")
    if is_torch(group_offsets):
        require(not (group_offsets.is_floating_point() or group_offsets.is_complex()), "group_offsets",
                f"must be an integer tensor, got {group_offsets.dtype}")
    if not validate:
        return None
    offs = host_ints(group_offsets, "group_offsets")
    require(offs[0] == 0, "group_offsets", f"must start at 0, got {offs[0]}")
    require(bool((np.diff(offs) >= 0).all()), "group_offsets", f"must be non-decreasing, got {offs.tolist()}")
    require(offs[-1] == num_rows, "group_offsets", f"must end at T = {num_rows} (rows of a), got {offs[-1]}")
    return offs


def check_out_dtype(out_dtype, default: str) -> str:
    name = default if out_dtype is None else str(out_dtype).replace("torch.", "")
    require(name in OUT_DTYPES, "out_dtype", f"must be one of {OUT_DTYPES}, got {out_dtype}")
    return name


def check_dense(a, w, group_offsets, out_dtype=None, validate=True):
    """Shared by the reference and the kernel. Returns ``(offsets, E, N, K, out dtype name)``."""
    check_act(a)
    check_ndim(w, 3, "w", "[E, N, K]")
    e, n, k = (int(s) for s in w.shape)
    require(int(a.shape[1]) == k, "w", f"K = {k} differs from a's K = {int(a.shape[1])}")
    if is_torch(a) and is_torch(w):
        require(dtype_name(w) == dtype_name(a), "w", f"dtype {dtype_name(w)} differs from a's {dtype_name(a)}")
    check_same_device(a=a, w=w, group_offsets=group_offsets)
    offs = check_group_offsets(group_offsets, e, int(a.shape[0]), validate)
    return offs, e, n, k, check_out_dtype(out_dtype, dtype_name(a))


def check_int4(a, weight, group_offsets, out_dtype=None, validate=True):
    """Returns ``(offsets, E, N, K, out dtype name)``."""
    check_act(a)
    e, n, k = check_int4_weight(weight)
    require(int(a.shape[1]) == k, "weight", f"K = {k} (from qweight's K // 2 = {k // 2}) differs from a's K = "
            f"{int(a.shape[1])}")
    check_same_device(a=a, qweight=weight.qweight, scales=weight.scales, zeros=weight.zeros, group_offsets=group_offsets)
    offs = check_group_offsets(group_offsets, e, int(a.shape[0]), validate)
    return offs, e, n, k, check_out_dtype(out_dtype, dtype_name(a))


def check_bias(bias, num_experts: int, n: int, name: str = "bias") -> None:
    """None, or float32 ``[E, N]`` (a per-expert bias), else a ValueError naming it."""
    if bias is None:
        return
    check_ndim(bias, 2, name, "[E, N] float32")
    require(tuple(int(s) for s in bias.shape) == (num_experts, n), name,
            f"shape {tuple(bias.shape)} must be [E, N] = {(num_experts, n)}")
    if is_torch(bias):
        require(dtype_name(bias) == "float32", name, f"must be float32, got {dtype_name(bias)}")


def check_mxfp4(a, weight, group_offsets, bias=None, out_dtype=None, validate=True):
    """Returns ``(offsets, E, N, K, out dtype name)``."""
    check_act(a)
    e, n, k = check_mxfp4_weight(weight)
    require(int(a.shape[1]) == k, "weight", f"K = {k} (from data's K // 2 = {k // 2}) differs from a's K = "
            f"{int(a.shape[1])}")
    check_bias(bias, e, n)
    check_same_device(a=a, data=weight.data, scales=weight.scales, bias=bias, group_offsets=group_offsets)
    offs = check_group_offsets(group_offsets, e, int(a.shape[0]), validate)
    return offs, e, n, k, check_out_dtype(out_dtype, dtype_name(a))


def check_fp8(a_fp8, a_scales, weight, group_offsets, out_dtype="bfloat16", validate=True):
    """Returns ``(offsets, E, N, K, act group size g, out dtype name)``."""
    check_ndim(a_fp8, 2, "a_fp8", "[T, K] float8_e4m3fn")
    require(dtype_name(a_fp8) == "float8_e4m3fn", "a_fp8", f"must be float8_e4m3fn, got {dtype_name(a_fp8)}")
    check_ndim(a_scales, 2, "a_scales", "[T, ceil(K / group_size)] float32")
    require(dtype_name(a_scales) == "float32", "a_scales", f"must be float32, got {dtype_name(a_scales)}")
    e, n, k = check_fp8_weight(weight)
    t = int(a_fp8.shape[0])
    require(int(a_fp8.shape[1]) == k, "weight", f"K = {k} differs from a_fp8's K = {int(a_fp8.shape[1])}")
    require(int(a_scales.shape[0]) == t, "a_scales", f"has {int(a_scales.shape[0])} rows, a_fp8 has {t}")
    g = act_group_size(k, int(a_scales.shape[1]))
    check_same_device(a_fp8=a_fp8, a_scales=a_scales, data=weight.data, scales=weight.scales,
                      group_offsets=group_offsets)
    offs = check_group_offsets(group_offsets, e, t, validate)
    return offs, e, n, k, g, check_out_dtype(out_dtype, "bfloat16")


def _grouped(a64: np.ndarray, weight, offs: np.ndarray, n: int) -> np.ndarray:
    """``y[rows of e] = a[rows of e] @ W_e^T`` for every expert with rows; ``weight`` a dense, int4 or fp8 stack,
    dequantized one expert at a time (``dequantized_expert``): an expert without rows is never read."""
    y = np.zeros((a64.shape[0], n))
    for e in range(len(offs) - 1):
        lo, hi = int(offs[e]), int(offs[e + 1])
        if hi > lo:
            y[lo:hi] = a64[lo:hi] @ dequantized_expert(weight, e).T
    return y


def grouped_gemm(a, w, group_offsets, *, out_dtype=None, batch_invariant=False) -> np.ndarray:
    """Dense grouped GEMM: ``a [T, K]``, ``w [E, N, K]`` -> float64 ``[T, N]``."""
    offs, _, n, _, _ = check_dense(a, w, group_offsets, out_dtype)
    return _grouped(f64(a), w, offs, n)


def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None, batch_invariant=False) -> np.ndarray:
    """W4A16 grouped GEMM on the exactly dequantized int4 weight -> float64 ``[T, N]``."""
    offs, _, n, _, _ = check_int4(a, weight, group_offsets, out_dtype)
    return _grouped(f64(a), weight, offs, n)


def grouped_gemm_mxfp4(a, weight, group_offsets, *, bias=None, out_dtype=None, batch_invariant=False) -> np.ndarray:
    """W4A16 grouped GEMM on the exactly dequantized MXFP4 weight, plus ``bias[e]`` on expert e's rows ->
    float64 ``[T, N]``."""
    offs, _, n, _, _ = check_mxfp4(a, weight, group_offsets, bias, out_dtype)
    y = _grouped(f64(a), weight, offs, n)
    if bias is not None:
        y += np.repeat(f64(bias), np.diff(offs), axis=0)  # bias[e] on each of expert e's rows
    return y


def grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, *, out_dtype="bfloat16",
                     batch_invariant=False) -> np.ndarray:
    """W8A8 grouped GEMM: dequantized fp8 activations times dequantized fp8 weights -> float64 ``[T, N]``."""
    offs, _, n, k, g, _ = check_fp8(a_fp8, a_scales, weight, group_offsets, out_dtype)
    a64 = f64(a_fp8) * np.repeat(f64(a_scales), g, axis=1)[:, :k]
    return _grouped(a64, weight, offs, n)
