"""A decode that never sees its own newest key (an off-by-one in the key range: ``seq_len - 1`` keys)."""
from kernels import triton as _T


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, **kwargs):
    return _T.paged_decode(q, k_cache, v_cache, block_table, (seq_lens - 1).clamp(min=0), **kwargs)
