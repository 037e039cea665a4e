"""A decode whose LSE leaves the softmax scale off the running maximum, as an online-softmax kernel written in
raw ``q . k`` units does: ``lse = max(q . k) + log(sum exp(scale * (q . k - max)))`` where the right one is
``scale * max(q . k) + log(...)``. ``out`` is right; only the LSE is off (by ``(1 - scale) * max(q . k)``)."""
import torch

from correctness.newcomer_impls.right_decode_merge import gather_kv

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None, soft_cap=None,
                 k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, return_lse=False,
                 batch_invariant=False):
    num_seqs, num_heads, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.zeros(num_seqs, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_seqs, num_heads), float("-inf"), dtype=torch.float32, device=q.device)
    for i, seq_len in enumerate(seq_lens.tolist()):
        if seq_len == 0:
            continue
        k, v = gather_kv(k_cache, v_cache, block_table[i], seq_len, k_scale, v_scale)
        first = max(0, seq_len - sliding_window) if sliding_window is not None else 0
        k, v = k[first:], v[first:]
        group = num_heads // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        raw = torch.einsum("hd,lhd->hl", q[i].float(), k)  # q . k, unscaled
        s = raw * scale
        if soft_cap is not None:
            s = soft_cap * torch.tanh(s / soft_cap)
        m = raw.max(dim=-1).values
        p = torch.exp(s - s.max(dim=-1).values[:, None])
        out[i] = torch.einsum("hl,lhd->hd", p, v) / p.sum(dim=-1)[:, None]
        lse[i] = m + torch.log(p.sum(dim=-1))  # the bug: the maximum in q . k units, not scale * q . k
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
