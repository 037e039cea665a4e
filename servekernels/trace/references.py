"""Self-contained torch references (float64 inside) for the exported Definitions.

Each string here is the body of a Definition's ``reference``: plain torch, no import of this project, so
flashinfer-bench (or anyone) can run it. ``GQA_PAGED`` follows flashinfer-bench's own semantics (page lists as
CSR ``kv_indptr``/``kv_indices``, ``kv_last_page_len``, LSE in base 2); ``OPS`` gives, per registry op, a
``_reference(**named)`` over this project's contract (natural-log LSE) that the generated ``run`` wrapper calls
with the Definition's inputs and constants. ``correctness/test_trace.py`` checks each against the float64 numpy
reference on every check case it covers.
"""
from __future__ import annotations

GQA_PAGED = '''
import math
import torch


def _attend(q, k, v, positions, sm_scale):
    # q [Lq, Hq, D], k/v [Lk, Hkv, D] float64; query j sees keys t <= positions[j]; natural-log LSE
    lq, hq, d = q.shape
    lk, hkv = k.shape[0], k.shape[1]
    kk = k.repeat_interleave(hq // hkv, dim=1)
    vv = v.repeat_interleave(hq // hkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * sm_scale
    mask = torch.arange(lk)[None, :] <= positions[:, None]
    s = torch.where(mask[None], s, torch.tensor(float("-inf"), dtype=s.dtype))
    lse = torch.logsumexp(s, dim=-1)  # [Hq, Lq], -inf where nothing is visible
    p = torch.where(mask[None], torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0)[..., None]), 0.0)
    out = torch.einsum("hqk,khd->qhd", p, vv)
    return out, lse.T


def _paged(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, sm_scale):
    page_size = k_cache.shape[1]
    q64 = q.to(torch.float64)
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float64)
    for b in range(qo_indptr.shape[0] - 1):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        p0, p1 = int(kv_indptr[b]), int(kv_indptr[b + 1])
        if p1 == p0 or q1 == q0:
            continue  # no key: output 0, LSE -inf
        last = page_size if kv_last_page_len is None else int(kv_last_page_len[b])
        n = (p1 - p0 - 1) * page_size + last
        pages = kv_indices[p0:p1].long()
        k = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:n].to(torch.float64)
        v = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:n].to(torch.float64)
        positions = n - (q1 - q0) + torch.arange(q1 - q0)  # bottom-right aligned causal mask
        out[q0:q1], lse[q0:q1] = _attend(q64[q0:q1], k, v, positions, sm_scale)
    return out.to(q.dtype), (lse / math.log(2.0)).to(torch.float32)  # LSE in base 2, as FlashInfer returns it
'''

GQA_DECODE_RUN = '''

@torch.no_grad()
def run({params}):
    qo_indptr = torch.arange(q.shape[0] + 1, dtype=torch.int32)
    return _paged(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, {last}, sm_scale)
'''

GQA_PREFILL_RUN = '''

@torch.no_grad()
def run({params}):
    return _paged(q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, {last}, sm_scale)
'''

_ATTENTION = '''
def _reference(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, scale=None, sliding_window=None,
               soft_cap=None, k_scale=1.0, v_scale=1.0, sinks=None):
    # paged attention over a block table; query j of sequence i sits at seq_len - q_len + j (bottom-right causal);
    # sinks [Hq]: one more logit per head in the softmax denominator, with no value (gpt-oss)
    num_seqs, block_size = seq_lens.shape[0], k_cache.shape[1]
    if query_start_loc is None:
        query_start_loc = torch.arange(num_seqs + 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q64 = q.to(torch.float64)
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float64)
    hq, hkv = q.shape[1], k_cache.shape[2]
    sink = None if sinks is None else sinks.to(torch.float64)[:, None]  # [Hq, 1]
    sink_bad = None if sinks is None else torch.isnan(sink) | torch.isposinf(sink)  # NaN in its head's rows
    for i in range(num_seqs):
        lo, hi, n = int(query_start_loc[i]), int(query_start_loc[i + 1]), int(seq_lens[i])
        if hi == lo:
            continue  # no query
        if n == 0:  # no key: out 0, LSE -inf (with sinks: the sink)
            if sink is not None:
                lse[lo:hi] = torch.where(sink_bad, float("nan"), sink).T
                out[lo:hi] = torch.where(sink_bad[..., None], float("nan"), 0.0).transpose(0, 1)
            continue
        blocks = block_table[i, :-(-n // block_size)].long()
        k = k_cache[blocks].reshape(-1, hkv, k_cache.shape[-1])[:n].to(torch.float64) * k_scale
        v = v_cache[blocks].reshape(-1, hkv, v_cache.shape[-1])[:n].to(torch.float64) * v_scale
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
        pos = n - (hi - lo) + torch.arange(hi - lo)
        s = torch.einsum("qhd,khd->hqk", q64[lo:hi], k) * scale
        if soft_cap is not None:
            s = soft_cap * torch.tanh(s / soft_cap)
        t = torch.arange(n)[None, :]
        mask = t <= pos[:, None]
        if sliding_window is not None:
            mask &= t > pos[:, None] - sliding_window
        sees = mask.any(dim=-1)  # [Lq]
        s = torch.where(mask[None], s, torch.tensor(float("-inf"), dtype=s.dtype))
        m = torch.where(sees[None, :, None], s.max(dim=-1, keepdim=True).values, torch.zeros(()))
        if sink is not None:
            m = torch.maximum(m, sink[..., None])  # every query sees itself: m is finite unless NaN
        p = torch.where(mask[None], torch.exp(s - m), torch.zeros(()))
        denom = p.sum(dim=-1) + (0.0 if sink is None else torch.exp(sink - m[..., 0]))
        # NaN in a visible value poisons the query (0 * NaN would reach masked ones: mask the values instead)
        v_nan = torch.isnan(v).any(dim=-1).T  # [Hq, Lk]
        poisoned = (mask[None] & v_nan[:, None, :]).any(dim=-1)  # [Hq, Lq]
        if sink is not None:
            poisoned = poisoned | sink_bad
        pv = torch.einsum("hqk,khd->hqd", p, torch.nan_to_num(v, nan=0.0))
        o = torch.where(sees[None, :, None], pv / torch.where(sees[None, :], denom, 1.0)[..., None], 0.0)
        l = torch.where(sees[None, :], m[..., 0] + torch.log(denom), torch.tensor(float("-inf"), dtype=s.dtype))
        o = torch.where(poisoned[..., None], float("nan"), o)
        l = torch.where(poisoned, float("nan"), l)
        out[lo:hi], lse[lo:hi] = o.transpose(0, 1), l.T
    return out.to(q.dtype), lse.to(torch.float32)
'''

_MERGE = '''
def _reference(outs, lses):
    # out = sum_s exp(lse_s - lse) out_s, lse = log sum_s exp(lse_s); an empty partial (-inf) adds nothing
    outs, lses = outs.to(torch.float64), lses.to(torch.float64)
    poisoned = (torch.isnan(lses) | (lses == float("inf"))).any(dim=0)
    lses = torch.where(poisoned, float("-inf"), lses)
    m = lses.max(dim=0).values
    m = torch.where(torch.isfinite(m), m, 0.0)
    w = torch.exp(lses - m)
    total = w.sum(dim=0)
    safe = torch.where((w > 0)[..., None], outs, 0.0)
    out = torch.where(total[..., None] > 0, (w[..., None] * safe).sum(dim=0) / torch.where(total > 0, total, 1.0)[..., None], 0.0)
    lse = torch.where(total > 0, m + torch.log(torch.where(total > 0, total, 1.0)), float("-inf"))
    out = torch.where(poisoned[..., None], float("nan"), out)
    lse = torch.where(poisoned, float("nan"), lse)
    return out.to(_OUT_DTYPES[0]), lse.to(torch.float32)
'''

_WRITE_KV = '''
def _reference(key, value, k_cache, v_cache, slot_mapping, k_scale=1.0, v_scale=1.0):
    # the caches after scattering key/value at slot_mapping (negative slots skipped); fp8 stores x / scale
    k_out, v_out = k_cache.clone(), v_cache.clone()
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blk, off = slots // k_cache.shape[1], slots % k_cache.shape[1]
    for src, cache, s in ((key, k_out, k_scale), (value, v_out, v_scale)):
        vals = src[keep].to(torch.float64)
        if cache.dtype == torch.float8_e4m3fn:
            vals = (vals / s).clamp(-448.0, 448.0)
        cache[blk, off] = vals.to(cache.dtype)
    return k_out, v_out
'''

_GEMM_COMMON = '''
def _grouped(a64, w64, group_offsets):
    # rows group_offsets[e]:group_offsets[e+1] of a [T, K] times expert e's w [N, K] transposed
    y = torch.zeros((a64.shape[0], w64.shape[1]), dtype=torch.float64)
    for e in range(w64.shape[0]):
        lo, hi = int(group_offsets[e]), int(group_offsets[e + 1])
        if hi > lo:
            y[lo:hi] = a64[lo:hi] @ w64[e].T
    return y


def _int4(qweight, scales, zeros, group_size):
    qweight = qweight.view(torch.uint8)  # packed nibbles travel as int8 bits (flashinfer-bench has no uint8)
    zeros = None if zeros is None else zeros.view(torch.uint8)
    nib = torch.stack([qweight & 15, qweight >> 4], dim=-1).reshape(*qweight.shape[:-1], -1).to(torch.float64)
    z = 8.0 if zeros is None else zeros.to(torch.float64).repeat_interleave(group_size, dim=-1)
    return (nib - z) * scales.to(torch.float64).repeat_interleave(group_size, dim=-1)


def _fp8(data, scales, granularity, block_size):
    e, n, k = data.shape
    s = scales.to(torch.float64)
    if granularity == "tensor":
        s = s[:, None, None]
    elif granularity == "channel":
        s = s[:, :, None]
    else:
        s = s.repeat_interleave(block_size[0], dim=1)[:, :n].repeat_interleave(block_size[1], dim=2)[:, :, :k]
    return data.to(torch.float64) * s
'''

_GROUPED_GEMM = _GEMM_COMMON + '''
def _reference(a, w, group_offsets):
    return _grouped(a.to(torch.float64), w.to(torch.float64), group_offsets).to(_OUT_DTYPES[0])
'''

_GROUPED_GEMM_INT4 = _GEMM_COMMON + '''
def _reference(a, weight_qweight, weight_scales, group_offsets, weight_zeros=None):
    w = _int4(weight_qweight, weight_scales, weight_zeros, _CONSTS["weight.group_size"])
    return _grouped(a.to(torch.float64), w, group_offsets).to(_OUT_DTYPES[0])
'''

_GROUPED_GEMM_FP8 = _GEMM_COMMON + '''
def _reference(a_fp8, a_scales, weight_data, weight_scales, group_offsets):
    k = a_fp8.shape[1]
    ng = a_scales.shape[1]
    g = k if ng == 1 else 1 << max(-(-k // ng) - 1, 0).bit_length()  # the power-of-two token group
    a = a_fp8.to(torch.float64) * a_scales.to(torch.float64).repeat_interleave(g, dim=1)[:, :k]
    w = _fp8(weight_data, weight_scales, _CONSTS["weight.granularity"], _CONSTS.get("weight.block_size"))
    return _grouped(a, w, group_offsets).to(_OUT_DTYPES[0])
'''

# ----------------------------------------------------------------- norms, RoPE, MLA decode, sampling (refs-a)

_NORM_COMMON = '''
def _norm64(x64, w, eps, weight_offset=0.0):
    # x / sqrt(mean(x**2) + eps) * (weight_offset + weight) per row, float64 (eps 0 on a zero row: 0 * inf = NaN)
    rms = 1.0 / torch.sqrt((x64 * x64).mean(dim=-1, keepdim=True) + float(eps))
    return x64 * rms * (float(weight_offset) + w.to(torch.float64))[None, :]
'''

_RMS_NORM = _NORM_COMMON + '''
def _reference(x, weight, eps, weight_offset=0.0):
    return _norm64(x.to(torch.float64), weight, eps, weight_offset).to(_OUT_DTYPES[0])
'''

_FUSED_ADD_RMS_NORM = _NORM_COMMON + '''
def _reference(x, residual, weight, eps):
    # residual + x rounded once to residual's dtype (what the contract writes in place), then the norm of it as
    # stored; both returned: (out in x's dtype, the new residual)
    new_residual = (residual.to(torch.float64) + x.to(torch.float64)).to(residual.dtype)
    return _norm64(new_residual.to(torch.float64), weight, eps).to(_OUT_DTYPES[0]), new_residual
'''

_RMS_NORM_QUANT_FP8 = _NORM_COMMON + '''
def _reference(x, weight, eps, group_size):
    # the norm rounded once to float32, then dynamic per-token-group e4m3: scale = max(amax, 2**-32) / 448 rounded
    # to float32 (NaN stays NaN), value = e4m3(clamp(float32(x / scale), +-448)), round to nearest even
    y = _norm64(x.to(torch.float64), weight, eps).to(torch.float32).to(torch.float64)
    t, h = y.shape
    g = h if int(group_size) >= h else int(group_size)  # >= H: one scale per token
    ng = -(-h // g)
    padded = torch.zeros((t, ng * g), dtype=torch.float64, device=y.device)
    padded[:, :h] = y.abs()
    amax = padded.reshape(t, ng, g).amax(dim=-1)  # NaN propagates
    s = (torch.maximum(amax, torch.full_like(amax, 2.0 ** -32)) / 448.0).to(torch.float32)
    scaled = (y / s.to(torch.float64).repeat_interleave(g, dim=1)[:, :h]).to(torch.float32)
    return scaled.clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s
'''

_ROTARY = '''
def _reference(positions, q, k, cos_sin_cache, rotary_dim=None):
    # (a, b) <- (a cos - b sin, b cos + a sin) by each token's cache row, float64, cast once; NeoX pairs
    # (x[i], x[i + rd/2]), GPT-J pairs (x[2i], x[2i+1]); dims past rd (the cache's width) kept
    rows = cos_sin_cache[positions.long()].to(torch.float64)
    half = cos_sin_cache.shape[1] // 2
    c, s = rows[:, None, :half], rows[:, None, half:2 * half]
    outs = []
    for t in (q, k):
        x = t.to(torch.float64)
        out = x.clone()
        if _CONSTS["is_neox"]:
            a, b = x[..., :half], x[..., half:2 * half]
            out[..., :half], out[..., half:2 * half] = a * c - b * s, b * c + a * s
        else:
            a, b = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
            out[..., 0:2 * half:2], out[..., 1:2 * half:2] = a * c - b * s, b * c + a * s
        outs.append(out.to(t.dtype))
    return tuple(outs)
'''

_MLA_DECODE = '''
def _reference(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, scale, kv_scale=1.0,
               query_start_loc=None, num_splits=None, split_size=None):
    # attention with one latent KV head: K = [c, k_pe], V = c (c = kv_c_cache * kv_scale, k_pe likewise);
    # query j of sequence i at seq_len - q_len + j (one per sequence without query_start_loc); natural-log LSE;
    # a sequence with no key: out 0, LSE -inf; NaN in a latent a query sees reaches its logit (V is part of K),
    # hence its max and every weight: that query's out and LSE are NaN, and no other query's
    num_seqs, block_size, dev = seq_lens.shape[0], kv_c_cache.shape[1], q_nope.device
    if query_start_loc is None:
        query_start_loc = torch.arange(num_seqs + 1)
    kv_scale = float(torch.as_tensor(kv_scale, dtype=torch.float64).reshape(-1)[0])
    q = torch.cat([q_nope.to(torch.float64), q_pe.to(torch.float64)], dim=-1)  # [T, H, R + P]
    out = torch.zeros(q_nope.shape, dtype=torch.float64, device=dev)
    lse = torch.full(q_nope.shape[:2], float("-inf"), dtype=torch.float64, device=dev)
    for i in range(num_seqs):
        lo, hi, n = int(query_start_loc[i]), int(query_start_loc[i + 1]), int(seq_lens[i])
        if hi == lo or n == 0:
            continue  # no query, or no key
        blocks = block_table[i, :-(-n // block_size)].long()
        c = kv_c_cache[blocks].reshape(-1, kv_c_cache.shape[-1])[:n].to(torch.float64) * kv_scale  # [n, R]
        pe = k_pe_cache[blocks].reshape(-1, k_pe_cache.shape[-1])[:n].to(torch.float64) * kv_scale  # [n, P]
        pos = n - (hi - lo) + torch.arange(hi - lo, device=dev)
        s = scale * torch.einsum("qhd,kd->hqk", q[lo:hi], torch.cat([c, pe], dim=-1))  # [H, Lq, n]
        mask = (torch.arange(n, device=dev)[None, :] <= pos[:, None])[None]  # [1, Lq, n]
        sees = mask.any(dim=-1, keepdim=True)  # [1, Lq, 1]
        s = torch.where(mask, s, float("-inf"))
        m = torch.where(sees, s.max(dim=-1, keepdim=True).values, 0.0)  # a NaN logit stays NaN
        p = torch.where(mask, torch.exp(s - m), 0.0)
        denom = p.sum(dim=-1, keepdim=True)
        # a NaN latent a query does not see has weight 0, and 0 * NaN would reach that query: zero it here
        pv = torch.einsum("hqk,kd->hqd", p, torch.where(torch.isnan(c), 0.0, c))
        o = torch.where(sees, pv / torch.where(sees, denom, 1.0), 0.0)
        l = torch.where(sees[..., 0], m[..., 0] + torch.log(denom[..., 0]), float("-inf"))
        out[lo:hi], lse[lo:hi] = o.transpose(0, 1), l.T
    return out.to(_OUT_DTYPES[0]), lse.to(torch.float32)
'''

_TOP_K_TOP_P_SAMPLE = '''
def _rows(v, batch, device):
    # a per-row parameter (a number or a [B] tensor) as float64 [B] (a Python float exactly, never via float32)
    return torch.as_tensor(v, dtype=torch.float64, device=device).reshape(-1).expand(batch)


def _mass_above(s, w):
    # sum(w_i : s_i > s_j) for every j: a running sum in decreasing s (as numpy's cumsum over the stable sort)
    order = torch.argsort(s, stable=True)
    asc = s[order]
    running = torch.cumsum(torch.flip(w[order], [0]), 0)  # from the largest s down
    suffix = torch.cat([torch.flip(running, [0]), torch.zeros(1, dtype=w.dtype, device=w.device)])
    return suffix[torch.searchsorted(asc, s, right=True)]


def _reference(logits, temperature, top_k, top_p, noise=None):
    # s = logits / T, p = softmax(s); top-k keeps s >= the k-th largest (ties kept; k <= 0 or >= V: all); top-p
    # keeps j iff the kept mass strictly above s_j < top_p * the top-k mass (top_p = 1: all); p = 0 never kept;
    # sample argmax(kept p / noise), ties to the lower id; T = 0: argmax of the logits; a row with NaN, +inf or
    # no finite logit: -1
    batch, vocab = logits.shape
    x = logits.to(torch.float64)
    e = torch.empty_like(x).exponential_() if noise is None else noise.to(torch.float64)  # none given: fresh Exp(1)
    t, p = _rows(temperature, batch, x.device), _rows(top_p, batch, x.device)
    k = _rows(top_k, batch, x.device).to(torch.int64)
    out = torch.full((batch,), -1, dtype=torch.int64, device=x.device)
    for r in range(batch):
        row = x[r]
        if torch.isnan(row).any() or (row == float("inf")).any() or not (row > float("-inf")).any():
            continue
        if float(t[r]) == 0.0:
            out[r] = int(torch.argmax(row))  # the first maximum
            continue
        s = row / t[r]
        prob = torch.exp(s - s.max())
        prob = prob / prob.sum()
        kr = int(k[r])
        kth = torch.sort(s, descending=True).values[kr - 1] if 0 < kr < vocab else float("-inf")
        in_k = s >= kth
        kept = in_k & (prob > 0)
        if float(p[r]) < 1:
            kept &= _mass_above(s, torch.where(in_k, prob, 0.0)) < p[r] * prob[in_k].sum()
        out[r] = int(torch.argmax(torch.where(kept, prob / e[r], -1.0)))
    return out
'''

_REJECTION_SAMPLE = '''
def _reference(draft_token_ids, target_probs, bonus_token_ids, uniforms, recovery_noise, draft_probs=None,
               num_draft_tokens=None):
    # per request: accept draft token i while target_p > 0 and u * draft_p <= target_p (no draft probs: while it
    # equals argmax(target / noise)); the first rejection emits argmax(max(0, target - draft) / noise) (an
    # all-zero residual: argmax(target / noise)) and ends the row; all accepted: the bonus token; then -1
    counts = [int(c) for c in (_CONSTS["num_draft_tokens"] if num_draft_tokens is None else num_draft_tokens)]
    target, u, noise = target_probs.to(torch.float64), uniforms.to(torch.float64), recovery_noise.to(torch.float64)
    draft = None if draft_probs is None else draft_probs.to(torch.float64)
    ids, bonus = draft_token_ids.long(), bonus_token_ids.reshape(-1).long()
    out = torch.full((len(counts), max(counts, default=0) + 1), -1, dtype=torch.int64, device=target.device)
    start = 0
    for b, n in enumerate(counts):
        accepted = True
        for i in range(n):
            j, tok = start + i, int(ids[start + i])
            choice = int(torch.argmax(target[j] / noise[j]))
            if draft is None:
                accepted, recovered = tok == choice, choice
            else:
                accepted = bool(target[j, tok] > 0) and bool(u[j] * draft[j, tok] <= target[j, tok])
                residual = torch.clamp(target[j] - draft[j], min=0.0)
                recovered = int(torch.argmax(residual / noise[j])) if bool((residual != 0).any()) else choice
            out[b, i] = tok if accepted else recovered
            if not accepted:
                break
        if accepted:
            out[b, n] = bonus[b]
        start += n
    return out
'''


# ------------------------------------------------------------------------------ routing, MoE, MXFP4 (refs-b)

_ROUTE = '''
def _top(rank, k, eligible=None):
    # per row, the k eligible columns of largest rank, in decreasing order; equal ranks to the lower column; NaN
    # ranks as -inf (two stable sorts: by rank, then eligible first)
    key = torch.where(torch.isnan(rank), float("-inf"), rank)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    if eligible is not None:
        barred = (~torch.gather(eligible, -1, order)).to(torch.int8)
        order = torch.gather(order, -1, torch.sort(barred, dim=-1, stable=True).indices)
    return order[..., :k]


def _reference(router_logits, top_k, correction_bias=None, num_groups=None, topk_groups=None,
               routed_scaling_factor=1.0):
    # scores s (softmax or sigmoid), experts chosen on c = s + bias (on the logits without a bias: the same order),
    # with groups only among the topk_groups groups of best two-largest-c sum; weights the chosen s, renormalized,
    # times the scaling factor; a token whose logits hold NaN gets NaN weights
    logits = router_logits.to(torch.float64)
    top_k = int(top_k)
    if _CONSTS.get("scoring", "softmax") == "softmax":
        p = torch.exp(logits - logits.max(dim=-1, keepdim=True).values) if logits.numel() else logits.clone()
        s = p / p.sum(dim=-1, keepdim=True)
    else:
        z = torch.exp(-logits.abs())
        s = torch.where(logits >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
    choice = s if correction_bias is None else s + correction_bias.to(torch.float64)[None, :]
    rank = logits if correction_bias is None else choice
    eligible = None
    num_tokens, num_experts = logits.shape
    if num_groups is not None:
        num_groups, size = int(num_groups), num_experts // int(num_groups)
        c = torch.where(torch.isnan(choice), float("-inf"), choice).reshape(num_tokens, num_groups, size)
        best2 = torch.sort(c, dim=-1).values[..., -2:]
        kept = _top(best2[..., 0] + best2[..., 1], int(topk_groups))
        group_of = torch.arange(num_experts) // size
        eligible = (group_of[None, :, None] == kept[:, None, :]).any(dim=-1)
    ids = _top(rank, top_k, eligible)
    weights = torch.gather(s, 1, ids)
    if _CONSTS.get("renormalize", True):
        weights = weights / weights.sum(dim=1, keepdim=True)
    weights = weights * float(routed_scaling_factor)
    row_nan = torch.isnan(logits).any(dim=1, keepdim=True)
    weights = torch.where(row_nan, float("nan"), weights)
    return ids.to(_OUT_DTYPES[0]), weights.to(_OUT_DTYPES[1])
'''

_MXFP4_COMMON = _GEMM_COMMON + '''
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _mxfp4(data, scales):
    # OCP MX: E2M1 codes (two a byte, even k in the low nibble, bit 3 the sign) times their block of 32's E8M0
    # scale 2**(e - 127), 255 the NaN scale; uint8 travels as int8 bits
    data, scales = data.view(torch.uint8), scales.view(torch.uint8)
    codes = torch.stack([data & 15, data >> 4], dim=-1).reshape(*data.shape[:-1], -1).long()
    mag = torch.tensor(_E2M1, dtype=torch.float64)[codes & 7]
    val = torch.where((codes & 8) != 0, -mag, mag)
    e = scales.long()
    x = torch.where(e == 255, float("nan"), torch.pow(torch.tensor(2.0, dtype=torch.float64), (e - 127).double()))
    return (val.reshape(*x.shape, 32) * x[..., None]).reshape(val.shape)
'''

_GROUPED_GEMM_MXFP4 = _MXFP4_COMMON + '''
def _reference(a, weight_data, weight_scales, group_offsets, bias=None):
    # y[rows of e] = a[rows of e] @ W_e^T (+ bias[e]): the exactly dequantized MXFP4 stack, float64
    y = _grouped(a.to(torch.float64), _mxfp4(weight_data, weight_scales), group_offsets)
    if bias is not None:
        counts = (group_offsets[1:] - group_offsets[:-1]).long()
        y = y + torch.repeat_interleave(bias.to(torch.float64), counts, dim=0)
    return y.to(_OUT_DTYPES[0])
'''

_FUSED_MOE = _MXFP4_COMMON + '''
def _fp8_act(a):
    # a [M, K] after the fp8 path's per-token-group (128) quantization, dequantized: scale = float32(max(amax,
    # 2**-32) / 448), q = e4m3(clamp(float32(a / scale), +-448)), round to nearest even
    m, k = a.shape
    g = 128 if 128 < k else k
    ng = -(-k // g)
    padded = torch.zeros((m, ng * g), dtype=torch.float64)
    padded[:, :k] = a.abs()
    amax = padded.reshape(m, ng, g).amax(dim=-1)
    s = (amax.clamp_min(2.0 ** -32) / 448.0).to(torch.float32).to(torch.float64)
    s = s.repeat_interleave(g, dim=1)[:, :k]
    q = (a / s).to(torch.float32).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(torch.float64)
    return q * s


def _gate(g):
    return 0.5 * (1.0 + torch.tanh(0.5 * g))  # sigmoid, overflow-free


def _activate(gu):
    if _CONSTS.get("activation", "silu") == "swiglu_oai":  # gpt-oss: interleaved (gate, up), clamped at 7
        gate = torch.clamp(gu[:, 0::2], max=7.0)
        up = torch.clamp(gu[:, 1::2], -7.0, 7.0)
        return gate * _gate(1.702 * gate) * (up + 1.0)
    inter = gu.shape[1] // 2  # silu(gate rows) * up rows
    return gu[:, :inter] * _gate(gu[:, :inter]) * gu[:, inter:]


def _expert(name, f, e):
    # expert e of w13 / w2 (dense, int4, fp8 or MXFP4: its fields flattened as <name>_<field>) as float64 [N, K]
    if f[name] is not None:
        return f[name][e].to(torch.float64)
    one = lambda t: None if t is None else t[e:e + 1]
    if name + ".group_size" in _CONSTS:
        return _int4(one(f[name + "_qweight"]), one(f[name + "_scales"]), one(f[name + "_zeros"]),
                     _CONSTS[name + ".group_size"])[0]
    if name + ".granularity" in _CONSTS:
        return _fp8(one(f[name + "_data"]), one(f[name + "_scales"]), _CONSTS[name + ".granularity"],
                    _CONSTS.get(name + ".block_size"))[0]
    return _mxfp4(one(f[name + "_data"]), one(f[name + "_scales"]))[0]


def _reference(x, topk_ids, topk_weights, w13=None, w2=None, w13_qweight=None, w13_scales=None, w13_zeros=None,
               w13_data=None, w2_qweight=None, w2_scales=None, w2_zeros=None, w2_data=None, w13_bias=None,
               w2_bias=None):
    # out[t] = sum_j topk_weights[t, j] * (w2[e] @ act(w13[e] @ x[t] + w13_bias[e]) + w2_bias[e]),
    # e = topk_ids[t, j]; every routed expert once, in increasing id (an unrouted one, NaN in the check cases, is
    # never read); fp8 weights: the activation entering each GEMM quantized per token-group of 128 first
    f = dict(w13=w13, w2=w2, w13_qweight=w13_qweight, w13_scales=w13_scales, w13_zeros=w13_zeros, w13_data=w13_data,
             w2_qweight=w2_qweight, w2_scales=w2_scales, w2_zeros=w2_zeros, w2_data=w2_data)
    fp8 = "w13.granularity" in _CONSTS
    xs, wts, ids = x.to(torch.float64), topk_weights.to(torch.float64), topk_ids.long()
    out = torch.zeros(xs.shape, dtype=torch.float64)
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        a = _fp8_act(xs[tok]) if fp8 else xs[tok]
        gu = a @ _expert("w13", f, e).T
        if w13_bias is not None:
            gu = gu + w13_bias[e].to(torch.float64)
        h = _activate(gu)
        y = (_fp8_act(h) if fp8 else h) @ _expert("w2", f, e).T
        if w2_bias is not None:
            y = y + w2_bias[e].to(torch.float64)
        out.index_add_(0, tok, wts[tok, slot][:, None] * y)
    return out.to(_OUT_DTYPES[0])
'''

OPS = {
    "paged_decode": _ATTENTION,
    "paged_prefill": _ATTENTION,
    "merge_states": _MERGE,
    "write_kv": _WRITE_KV,
    "grouped_gemm": _GROUPED_GEMM,
    "grouped_gemm_int4": _GROUPED_GEMM_INT4,
    "grouped_gemm_fp8": _GROUPED_GEMM_FP8,
    # norms, RoPE, MLA decode, sampling
    "rms_norm": _RMS_NORM,
    "fused_add_rms_norm": _FUSED_ADD_RMS_NORM,
    "rms_norm_quant_fp8": _RMS_NORM_QUANT_FP8,
    "rotary_embedding": _ROTARY,
    "mla_decode": _MLA_DECODE,
    "top_k_top_p_sample": _TOP_K_TOP_P_SAMPLE,
    "rejection_sample": _REJECTION_SAMPLE,
    # routing, MoE, MXFP4
    "route": _ROUTE,
    "fused_moe": _FUSED_MOE,
    "grouped_gemm_mxfp4": _GROUPED_GEMM_MXFP4,
}

# an op without a torch body of its own: the Definition's run calls this project's float64 numpy reference
# (not self-contained: it needs servekernels importable; its description says so)
FALLBACK = '''
def _reference(**named):
    from servekernels.trace.families import call_reference
    out = call_reference(_OP, named, _CONSTS, _STRUCTS)
    return tuple(o.to(d) for o, d in zip(out, _OUT_DTYPES))
'''
