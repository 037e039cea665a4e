"""A decode that is right, and at import makes every timer read 100x faster: ``time.perf_counter`` and CUDA
events' ``elapsed_time``."""
import time

import torch

from correctness.cheats import _honest

CAUGHT_BY = "judge untouched"

_real_counter = time.perf_counter
_real_elapsed = torch.cuda.Event.elapsed_time
time.perf_counter = lambda: _real_counter() / 100.0
torch.cuda.Event.elapsed_time = lambda self, end: _real_elapsed(self, end) / 100.0


def paged_decode(*args, **kwargs):
    return _honest.paged_decode(*args, **kwargs)
