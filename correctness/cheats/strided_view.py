"""A decode that computes into a padded workspace (head_dim + 64 per row) and returns the view of its first
head_dim columns: the values compare equal, a caller reading it as laid out reads padding."""
import torch

from correctness.cheats import _honest

CAUGHT_BY = "output owns storage"


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, return_lse=False, **kwargs):
    out, lse = _honest.paged_decode(q, k_cache, v_cache, block_table, seq_lens, return_lse=True, **kwargs)
    pad = torch.zeros((*q.shape[:-1], q.shape[-1] + 64), dtype=q.dtype)
    pad[..., :q.shape[-1]] = out
    view = pad[..., :q.shape[-1]]
    return (view, lse) if return_lse else view
