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


# Half the smallest subnormal: the largest absolute error of one round-to-nearest into the subnormal range,
# where the relative bound u no longer holds (a float16 output of 2e-6 is stored to within 2**-25, ~3e-8).
SUBNORMAL_ROUNDOFF = {
    "float64": 2.0 ** -1075,
    "float32": 2.0 ** -150,
    "float16": 2.0 ** -25,
    "bfloat16": 2.0 ** -134,
    "float8_e4m3fn": 2.0 ** -10,
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
    Budget: 4 u (3 roundings plus one of margin), never below the float32 floor, plus the final cast's absolute
    error where the output is subnormal in ``dtype`` (``SUBNORMAL_ROUNDOFF``, twice: the cast and one of margin).
    Works elementwise on arrays.
    """
    u = unit_roundoff(dtype)
    tiny = 2 * SUBNORMAL_ROUNDOFF[str(dtype).replace("torch.", "")]
    return ((4 * u + FP32_ATTENTION_REL) * v_max if u > 2.0 ** -24 else 4 * FP32_ATTENTION_REL * v_max) + tiny


# Smallest normal of each dtype: below it a rounding's error is absolute (half a subnormal step), not relative.
SMALLEST_NORMAL = {"float64": 2.0 ** -1022, "float32": 2.0 ** -126, "float16": 2.0 ** -14, "bfloat16": 2.0 ** -126}


def attention_out_atol_tight(dtype, magnitude, logit_max):
    """The sharpest attention-output tolerance, for a cache in q's dtype (V enters ``P @ V`` exactly), per element
    of ``magnitude`` = ``sum_i p_i |v_i|`` (``PagedBatch.attention_scales()[0]``) given the largest visible |logit|
    ``logit_max`` (``attention_scales()[1]``, a scalar or an array that broadcasts): the bound a half-precision
    ``P @ V`` accumulator must break over thousands of keys.

    The roundings the contract allows, against the float64 reference ``sum_i p_i v_i / l``:
    - each softmax weight p_i in (0, 1] cast to ``dtype`` before ``P @ V``, in any rounding direction (a GPU
      rounds to nearest; the interpreter truncates float32 -> bfloat16): |p~_i - p_i| <= 2 u p_i while p_i is
      normal in ``dtype``. ``l`` (float32, from the unrounded p) is untouched, so the sum moves by at most
      2 u sum p_i |v_i| / l = 2 u magnitude. p_i is normal when the logits span less than
      ``-log2(SMALLEST_NORMAL) * ln 2`` (9.7 for float16), guaranteed by 2 ``logit_max`` below it: checked here
      (a ValueError names ``logit_max`` otherwise; subnormal weights would need an absolute term);
    - the float32 accumulation, the online-softmax rescales and exp2 approximations: FP32_ATTENTION_REL;
    - the store of the output: u |out| <= u (1 + 2 u) magnitude.
    Budget: ((1 + 2 u)(1 + u) - 1 + FP32_ATTENTION_REL) magnitude, about 3 u: no margin, every term a worst case.

    What it rejects: a running sum rounded to ``dtype`` after every tile of B keys makes one rounding of |acc| per
    tile. With values that do not cancel (|out| ~ magnitude) those T errors of up to u |acc_t| add as a random walk
    over the growing sum: some 1.5 u at the median and up to 10 u over 8,200 keys in tiles of 64 (float16; a
    truncating bfloat16 cast is biased and far worse), so a part of the elements passes 3 u and fails.
    """
    u = unit_roundoff(dtype)
    logit_max = np.asarray(logit_max, dtype=np.float64)
    span_limit = -np.log2(SMALLEST_NORMAL[str(dtype).replace("torch.", "")]) * np.log(2.0)
    if not np.all(2 * logit_max < span_limit):
        raise ValueError(f"logit_max: logits spanning up to {2 * float(logit_max.max()):.3g} reach {dtype}'s "
                         f"subnormal weights (the span must stay below {span_limit:.3g})")
    return ((1 + 2 * u) * (1 + u) - 1 + FP32_ATTENTION_REL) * np.asarray(magnitude, dtype=np.float64)


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
