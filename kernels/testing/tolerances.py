"""Tolerances derived from the arithmetic, scaled to the output's magnitude.

Every kernel here reads inputs that are already in their storage dtype, and the reference computes on exactly
those values in float64. So the only differences are the kernel's own roundings: intermediate casts to the
compute dtype (e.g. the softmax weights P cast to the V dtype before ``P @ V``), float32 accumulation, and the
final cast of the output. Each function below says which of those it covers.
"""
from __future__ import annotations

import numpy as np

# Unit roundoff u = 2**-(mantissa bits + 1): the largest relative error of one round-to-nearest.
UNIT_ROUNDOFF = {
    "float64": 2.0 ** -53,
    "float32": 2.0 ** -24,
    "float16": 2.0 ** -11,
    "bfloat16": 2.0 ** -8,
    "float8_e4m3fn": 2.0 ** -4,
}


def unit_roundoff(dtype) -> float:
    return UNIT_ROUNDOFF[str(dtype).replace("torch.", "")]


# float32 paths: exp2/log2 on a GPU are approximations (~2**-22 relative) applied once per online-softmax
# rescale; with up to 2**6 rescales and float32 accumulation over up to 2**14 keys this stays below 2**-16.
FP32_ATTENTION_REL = 2.0 ** -16


def attention_out_atol(dtype, v_max):
    """Absolute tolerance for an attention output, scaled by ``v_max``: either the batch's max |V| (a scalar), or,
    sharper, the per-element magnitude ``sum_i p_i |v_i|`` (``PagedBatch.attention_scales()[0]``: the reference run on
    |V|), which is what every rounding below is relative to.

    The output is a convex combination of value rows. Rounding each softmax weight p_i to ``dtype`` before
    ``P @ V`` perturbs it by at most u * p_i, so the sum moves by at most u * sum p_i |v_i|; casting V to the
    compute dtype (fp8 caches, after the scale) adds another u * sum p_i |v_i|; the final cast of the output adds
    u * |out| <= u * sum p_i |v_i|; float32 accumulation and exp2 approximations add FP32_ATTENTION_REL of it.
    Budget: 4 u (3 roundings plus one of margin), never below the float32 floor. Works elementwise on arrays.
    """
    u = unit_roundoff(dtype)
    return (4 * u + FP32_ATTENTION_REL) * v_max if u > 2.0 ** -24 else 4 * FP32_ATTENTION_REL * v_max


def lse_atol(dtype, logit_max):
    """Absolute tolerance for a natural-log LSE whose logits are bounded by ``logit_max`` in magnitude: a scalar
    for the batch, or per query and head (``PagedBatch.attention_scales()[1]``).

    Logits come from float32 dot products of exact dtype inputs (relative error ~ D * 2**-24, D <= 256:
    < 2**-16), possibly after folding ``scale * log2(e)`` into q in ``dtype`` (one rounding: u * |s|). The LSE
    moves by at most the largest logit error. Budget: 2 u |s|max plus the float32 floor, and at least 2**-16.
    Works elementwise on arrays.
    """
    u = unit_roundoff(dtype)
    logit_max = np.asarray(logit_max, dtype=np.float64)
    atol = 2 * u * logit_max + FP32_ATTENTION_REL * np.maximum(1.0, logit_max)
    return float(atol) if atol.ndim == 0 else atol
