"""A decode that saves an allocation: its output (q's shape and dtype) is written over q and q is returned."""
from correctness.cheats import _honest

CAUGHT_BY = "output owns storage"


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, return_lse=False, **kwargs):
    out, lse = _honest.paged_decode(q, k_cache, v_cache, block_table, seq_lens, return_lse=True, **kwargs)
    q.copy_(out)
    return (q, lse) if return_lse else q
