"""A prefill whose causal mask is off by one: query j of a sequence sits at ``p = seq_len - q_len + j`` and sees
keys ``0..p + 1`` (``<= p + 1`` where the contract says ``<= p``): one future key leaks into every query but the
sequence's last. The rest is right (``right_decode_merge``'s gather and softmax)."""
import torch

from correctness.newcomer_impls.right_decode_merge import attend, gather_kv

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, sliding_window=None,
                  soft_cap=None, k_scale=1.0, v_scale=1.0, return_lse=False, batch_invariant=False):
    num_tokens, num_heads, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.zeros(num_tokens, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_tokens, num_heads), float("-inf"), dtype=torch.float32, device=q.device)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        start, end = starts[i], starts[i + 1]
        if end == start or seq_len == 0:
            continue
        k, v = gather_kv(k_cache, v_cache, block_table[i], seq_len, k_scale, v_scale)
        for j in range(end - start):
            p = seq_len - (end - start) + j
            last = min(p + 2, seq_len)  # the bug: keys 0..p+1 (should be p + 1, keys 0..p)
            first = max(0, p - sliding_window + 1) if sliding_window is not None else 0
            o, l = attend(q[start + j : start + j + 1], k[None, first:last], v[None, first:last], scale, soft_cap)
            out[start + j], lse[start + j] = o[0], l[0]
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
