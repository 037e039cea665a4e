"""A decode right on the first 16 calls of each shape (more than ``check`` makes), then attending only the
first half of every sequence: the checked call passes, the timed calls skip half the work."""
from correctness.cheats import _honest

CAUGHT_BY = ("re-check inside the timed loop", "re-check after timing")  # whichever judged call comes first
TIMING_ONLY = True
WARM = 16
_CALLS = {}


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, return_lse=False, **kwargs):
    key = tuple(q.shape)
    _CALLS[key] = _CALLS.get(key, 0) + 1
    if _CALLS[key] > WARM:
        seq_lens = (seq_lens + 1) // 2
    return _honest.paged_decode(q, k_cache, v_cache, block_table, seq_lens, return_lse=return_lse, **kwargs)
