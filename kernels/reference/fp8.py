"""float8_e4m3fn as the math defines it: saturating round-to-nearest-even onto the e4m3 grid, in float64.

e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no inf, max finite 448, min normal 2**-6,
subnormal step 2**-9.
"""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0
E4M3_MIN_NORMAL = 2.0 ** -6
E4M3_SUBNORMAL_STEP = 2.0 ** -9
E4M3_MANTISSA_BITS = 3


def round_to_e4m3(x) -> np.ndarray:
    """Nearest e4m3fn value (ties to even), saturated to +-448, as float64. NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log2(np.maximum(mag, E4M3_MIN_NORMAL)))
    step = np.where(mag < E4M3_MIN_NORMAL, E4M3_SUBNORMAL_STEP, 2.0 ** (exponent - E4M3_MANTISSA_BITS))
    rounded = np.round(x / step) * step  # np.round rounds half to even
    return np.clip(rounded, -E4M3_MAX, E4M3_MAX)


def to_e4m3_tensor(x):
    """A torch float8_e4m3fn tensor holding ``round_to_e4m3(x)`` (the cast is exact: values are on the grid)."""
    import torch  # deferred: the references are numpy; torch only for a tensor argument

    return torch.from_numpy(round_to_e4m3(x)).to(torch.float8_e4m3fn)
