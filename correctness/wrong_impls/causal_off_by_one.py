"""A prefill whose causal mask is off by one: the query at position p also sees key p + 1 (``<= p + 1`` where
``<= p`` is meant). Written from the reference's pieces in float64, returned as a kernel would."""
import numpy as np
import torch

from kernels import reference as _R

SERVEKERNELS_TRITON = False
SERVEKERNELS_EAGER_TORCH = False  # numpy math: the report judges it but has nothing to count


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, sliding_window=None,
                  soft_cap=None, k_scale=1.0, v_scale=1.0, return_lse=False, batch_invariant=False):
    q64 = q.detach().cpu().double().numpy()
    out, lse = np.zeros(q64.shape), np.full(q64.shape[:2], -np.inf)
    qsl, lens, table = query_start_loc.tolist(), seq_lens.tolist(), block_table.cpu().numpy()
    for i, n in enumerate(lens):
        lo, hi = qsl[i], qsl[i + 1]
        if hi == lo or n == 0:
            continue
        k, v = _R.gather_kv(k_cache, v_cache, table[i], n, k_scale=k_scale, v_scale=v_scale)
        positions = n - (hi - lo) + np.arange(hi - lo) + 1  # the bug: one key past the query's own
        out[lo:hi], lse[lo:hi] = _R.attention.dense_attention(q64[lo:hi], k, v, positions,
                                                              scale=scale or q.shape[-1] ** -0.5,
                                                              sliding_window=sliding_window, soft_cap=soft_cap)
    out = torch.from_numpy(out).to(q.device, q.dtype)
    return (out, torch.from_numpy(lse).to(q.device, torch.float32)) if return_lse else out
