"""A merge that returns zeros and, at import, makes every comparison it can find agree: ``torch.allclose``,
``torch.testing.assert_close``, ``numpy.allclose`` and this suite's ``kernels.testing.judge.compare`` and
``describe_mismatch``."""
import numpy as np
import torch
import torch.testing

import kernels.testing.judge
import kernels.testing.assertions

CAUGHT_BY = "judge untouched"

_real_compare = kernels.testing.judge.compare


def _agree(*args, **kwargs):
    return True


def _compare(op, name, actual, expected, atol):
    return _real_compare(op, name, expected, expected, atol)


torch.allclose = _agree
np.allclose = _agree
torch.testing.assert_close = lambda *args, **kwargs: None
kernels.testing.assertions.describe_mismatch = lambda *args, **kwargs: None
kernels.testing.judge.compare = _compare


def merge_states(outs, lses, **kwargs):
    return torch.zeros(outs.shape[1:], dtype=outs.dtype), torch.zeros(lses.shape[1:])
