"""Multi-head latent attention (DeepSeek-V2/V3, Kimi K2) decode over a paged latent cache, defined in float64 numpy.

After weight absorption every sequence has one latent KV head: a cached token is ``c`` (``kv_lora_rank`` = R
values) and ``k_pe`` (the rope part, P values). It is ordinary attention with one KV head, ``K = [c, k_pe]``
and ``V = c``, for queries ``[q_nope, q_pe]``: built here from ``kernels.reference.attention``'s primitives
(``gather_kv`` reads the sequence's slots out of the two paged caches, ``dense_attention`` attends), so it
inherits their empty-sequence, NaN and unowned-memory semantics.
"""
from __future__ import annotations

import numpy as np

from kernels.reference._arrays import f64
from kernels.reference.attention import dense_attention, gather_kv
from kernels.validate import check_mla, check_split_control, host_ints


def mla_decode(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
               num_splits=None, split_size=None, query_start_loc=None, return_lse=False, batch_invariant=False):
    """``out [num_tokens, H, R]`` (float64) and, with ``return_lse``, the natural-log ``lse [num_tokens, H]``.

    ``s[h, t] = scale * (q_nope[h] . c[t] + q_pe[h] . k_pe[t])`` with ``c = kv_c_cache * kv_scale`` and
    ``k_pe = k_pe_cache * kv_scale``; ``out[h] = softmax(s[h]) @ c``. Without ``query_start_loc`` one query per
    sequence at position ``seq_len - 1``; with it, query j of sequence i sits at ``seq_len - q_len + j`` and sees
    keys ``0..`` its position (causal among the sequence's queries). ``num_splits``, ``split_size`` and
    ``batch_invariant`` partition a kernel's work, not the math: ignored here.
    """
    check_split_control(num_splits, split_size)
    dims = check_mla(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, query_start_loc, scale=scale,
                     kv_scale=kv_scale)
    q = np.concatenate([f64(q_nope), f64(q_pe)], axis=-1)  # [T, H, R + P]: one query over K = [c, k_pe]
    bt = host_ints(block_table, "block_table")
    out = np.zeros((dims.num_tokens, dims.num_heads, dims.rank))
    lse = np.full((dims.num_tokens, dims.num_heads), -np.inf)
    # one latent head: the caches as [num_blocks, block_size, 1, dim], so gather_kv reads them as a KV pair
    c_cache, pe_cache = kv_c_cache[:, :, None], k_pe_cache[:, :, None]
    for i in range(dims.num_seqs):
        lo, hi = int(dims.query_start_loc[i]), int(dims.query_start_loc[i + 1])
        n = int(dims.seq_lens[i])
        if hi == lo or n == 0:
            continue  # no query, or no key: out 0, lse -inf
        c, k_pe = gather_kv(c_cache, pe_cache, bt[i], n, k_scale=kv_scale, v_scale=kv_scale)  # [n, 1, R], [n, 1, P]
        positions = n - (hi - lo) + np.arange(hi - lo)
        out[lo:hi], lse[lo:hi] = dense_attention(q[lo:hi], np.concatenate([c, k_pe], axis=-1), c, positions,
                                                 scale=dims.scale)
    return (out, lse) if return_lse else out
