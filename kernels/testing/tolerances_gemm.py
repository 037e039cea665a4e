"""Derived tolerances for the grouped GEMMs, scaled to the problem's magnitude.

The kernels are compared with the float64 reference computed from the SAME stored values (the same
activations, the same quantized weights and scales), so the only differences are the kernel's own roundings:

- products: float16/bfloat16/float8 operands multiply exactly in float32 (at most 11 x 11 significant bits);
  int4 weights enter the dot as small integers (exact); float32 x float32 products round once (u32).
- float32 accumulation of K terms: the classic bound ``|err| <= gamma_K * sum_k |a_k w_k|`` with
  ``gamma_K = K u / (1 - K u)``, u = 2**-24. Per-K-block scaling (int4 group scales, fp8 block scales) adds
  one multiplication per K block on each term's path; summing the blocks' partials is part of the K-term
  accumulation (``extra_roundings`` counts each weight format's extra roundings).
- the final cast to ``out_dtype``: ``u_out * |y|`` (as ``rtol``). Triton's interpreter (3.9) casts float32 to
  bfloat16 by TRUNCATION (toward zero; float16 is rounded to nearest): one ulp = 2 u_out there.

So ``atol = gamma_(K + extra) * max_tn sum_k |a_tk w_nk|`` and ``rtol = u_out``. On a GPU, tensor cores
accumulate with a narrower internal alignment (fp8 wgmma on Hopper keeps about 14 bits inside one
instruction's K-slice); ``gpu_accum_unit`` widens u accordingly for the GPU-marked tests.
"""
from __future__ import annotations

import numpy as np

from kernels.reference._arrays import f64
from kernels.reference.quant import dequantized_expert
from kernels.testing.tolerances import unit_roundoff

U32 = 2.0 ** -24
# Hopper tensor-core accumulation inside one MMA: fp8 keeps ~14 significant bits, 16-bit inputs ~22-23.
GPU_ACCUM_UNIT = {"float8_e4m3fn": 2.0 ** -14, "float16": 2.0 ** -22, "bfloat16": 2.0 ** -22, "float32": U32}


def cast_rtol(out_dtype) -> float:
    """Relative error of the kernel's final cast to ``out_dtype``: u (round to nearest even; under the interpreter
    too, whose bfloat16 casts ``kernels.interpreter_fixes`` rounds as a GPU does)."""
    return unit_roundoff(out_dtype)


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative bound of n accumulated roundings."""
    return n * u / (1.0 - n * u)


def abs_dot_max(a_abs64: np.ndarray, w_eff, offsets) -> float:
    """max over rows t and columns n of sum_k |a_tk| |w[e(t)]_nk| (``a_abs64`` already absolute; ``w_eff`` a
    float64/torch ``[E, N, K]`` stack or an ``Int4Weight``/``Fp8Weight``, dequantized one expert with rows at a
    time)."""
    offs = np.asarray(offsets, dtype=np.int64)
    best = 0.0
    for e in range(len(offs) - 1):
        lo, hi = int(offs[e]), int(offs[e + 1])
        if hi > lo:
            w_abs = np.abs(dequantized_expert(w_eff, e))
            best = max(best, float((a_abs64[lo:hi] @ w_abs.T).max(initial=0.0)))
    return best


def extra_roundings(weights: str) -> int:
    """The roundings on one term's path beyond the float32 accumulation of the K terms (``grouped_gemm_tol``'s
    ``extra_roundings``), by weight format, for every activation dtype:

    - ``"bf16"`` (dense): 1, the product: 16-bit operands multiply exactly in float32, float32 ones round once.
    - ``"int4"``: 2, the product (a float32 activation times the weight's small integer ``nibble - zero`` rounds
      once; a 16-bit one is exact) and the group scale's multiply of the group's float32 partial. Adding the
      group partials up is not a further rounding: a term passes at most ``group_size - 1`` additions inside its
      group and ``K / group_size - 1`` across groups (split-K's in-order sum of the slices included), at most
      ``K - 1`` in all, which ``gamma_K`` already bounds.
    - ``"mxfp4"``: 3: the product (as int4: a float32 activation times twice an E2M1 value rounds once, a 16-bit
      one is exact), the block partial added into the accumulator (the block scale is a power of two: its
      multiply is exact), and the float32 bias add (``grouped_gemm_tol``'s ``bias`` adds ``|bias|`` to the
      magnitude the bound scales).
    - ``"fp8"``: 4: each K step's float32 partial is multiplied by the activation scale and the weight's (2; a
      channel or tensor weight scale multiplies the accumulator once instead), with 2 to spare (not tightened).
    """
    return {"bf16": 1, "int4": 2, "mxfp4": 3, "fp8": 4}[weights]


def grouped_gemm_tol(a_eff, w_eff, offsets, out_dtype, *, extra_roundings: int = 1,
                     accum_unit: float = U32, step_terms: int = 0, step_unit: float = 0.0, bias=None) -> dict:
    """``{"atol", "rtol"}`` for a grouped GEMM whose exact operands (dequantized, float64) are ``a_eff [T, K]``
    and ``w_eff [E, N, K]`` (or the ``Int4Weight``/``Fp8Weight`` itself: then each expert with rows is
    dequantized on its own, never the whole stack): float32 accumulation over K terms plus ``extra_roundings`` per element (``extra_roundings(weights)``), then the
    output cast (rtol). ``step_terms`` / ``step_unit``
    add a narrower accumulation inside each K step (GPU fp8 tensor cores). ``bias`` (``[E, N]``, added in float32):
    its largest |entry| joins the magnitude (``max(sum |a w| + |b|) <= max sum |a w| + max |b|``; NaN entries, an
    empty expert's poison, are skipped)."""
    a = np.abs(f64(a_eff))
    k = a.shape[1]
    rel = gamma(k + extra_roundings, accum_unit) + (gamma(step_terms, step_unit) if step_terms else 0.0)
    bias_max = float(np.nanmax(np.abs(f64(bias)), initial=0.0)) if bias is not None else 0.0
    return {"atol": rel * (abs_dot_max(a, w_eff, offsets) + bias_max),
            "rtol": cast_rtol(out_dtype)}
