"""A right decode and merge, written as a newcomer would: gather each sequence's keys from the paged cache, float32
scores, a softmax, one cast of the result. ``num_splits``, ``split_size`` and ``batch_invariant`` are taken and
ignored (every sequence is computed on its own, unsplit)."""
import torch

SERVEKERNELS_TRITON = False  # eager torch: nothing to count under the Triton interpreter
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def gather_kv(k_cache, v_cache, block_table, seq_len, k_scale=1.0, v_scale=1.0):
    """One sequence's keys and values, ``[seq_len, num_kv_heads, head_dim]`` float32, scaled (fp8 caches)."""
    block_size = k_cache.shape[1]
    blocks = block_table[: (seq_len + block_size - 1) // block_size].long()
    k = k_cache[blocks].flatten(0, 1)[:seq_len].float() * float(k_scale)
    v = v_cache[blocks].flatten(0, 1)[:seq_len].float() * float(v_scale)
    return k, v


def attend(q, k, v, scale, soft_cap=None):
    """Queries ``q [M, Hq, D]`` over keys ``k, v [M, L, Hkv, D]`` (float32, already masked to what each query
    sees): ``(out [M, Hq, D], lse [M, Hq])`` float32. GQA: query head h reads KV head h // (Hq // Hkv)."""
    group = q.shape[1] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    s = torch.einsum("mhd,mlhd->mhl", q.float(), k) * scale
    if soft_cap is not None:
        s = soft_cap * torch.tanh(s / soft_cap)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    return torch.einsum("mhl,mlhd->mhd", p, v), lse


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
        o, l = attend(q[i : i + 1], k[None, first:], v[None, first:], scale, soft_cap)
        out[i], lse[i] = o[0], l[0]
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def merge_states(outs, lses):
    lses = lses.float()
    top = lses.max(dim=0).values
    top = torch.where(top == float("-inf"), torch.zeros_like(top), top)  # every partial empty: weights exp(-inf) = 0
    w = torch.exp(lses - top)  # a partial with LSE NaN or +inf makes its row NaN here
    num = torch.where(w[..., None] > 0, outs.float() * w[..., None], torch.zeros((), device=outs.device))
    num = torch.where(torch.isnan(w)[..., None], float("nan"), num).sum(dim=0)
    den = w.sum(dim=0)
    out = torch.where(den[..., None] > 0, num / den[..., None], torch.zeros((), device=outs.device))
    out = torch.where(torch.isnan(den)[..., None], float("nan"), out)
    return out.to(outs.dtype), top + torch.log(den)
