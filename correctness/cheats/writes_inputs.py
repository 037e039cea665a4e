"""A decode that attends at most 512 keys per sequence and clamps ``seq_lens`` in place to match, so a
reference computed from the same tensors afterwards agrees."""
from correctness.cheats import _honest

CAUGHT_BY = "inputs unchanged"


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, return_lse=False, **kwargs):
    seq_lens.clamp_(max=512)
    return _honest.paged_decode(q, k_cache, v_cache, block_table, seq_lens, return_lse=return_lse, **kwargs)
