"""A decode tuned on the public check shapes (at most 6 sequences): computes the batch's first 8 sequences
and leaves the rest of the output as whatever the buffer held."""
import torch

from correctness.cheats import _honest

CAUGHT_BY = "drawn shape"
FRONT = 8


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, return_lse=False, **kwargs):
    n = min(FRONT, q.shape[0])
    head = _honest.paged_decode(q[:n], k_cache, v_cache, block_table[:n], seq_lens[:n], return_lse=True, **kwargs)
    out = torch.zeros_like(q)
    lse = torch.zeros(q.shape[:2])
    out[:n], lse[:n] = head
    return (out, lse) if return_lse else out
