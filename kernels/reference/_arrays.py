"""Conversions the references share: anything array-like (numpy, CPU or GPU torch, fp8/bf16 included) to float64."""
from __future__ import annotations

import numpy as np


def f64(x) -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor of any dtype (float8 and bfloat16 included)."""
    if type(x).__module__.startswith("torch"):
        import torch  # deferred: the references are numpy; torch only for a tensor argument

        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)
