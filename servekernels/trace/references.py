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

# ------------------------------------------------------------------------------ routing, MoE, MXFP4 (refs-b)

OPS = {
    "paged_decode": _ATTENTION,
    "paged_prefill": _ATTENTION,
    "merge_states": _MERGE,
    "write_kv": _WRITE_KV,
    "grouped_gemm": _GROUPED_GEMM,
    "grouped_gemm_int4": _GROUPED_GEMM_INT4,
    "grouped_gemm_fp8": _GROUPED_GEMM_FP8,
    # norms, RoPE, MLA decode, sampling

    # routing, MoE, MXFP4

}

# an op without a torch body of its own: the Definition's run calls this project's float64 numpy reference
# (not self-contained: it needs servekernels importable; its description says so)
FALLBACK = '''
def _reference(**named):
    from servekernels.trace.families import call_reference
    out = call_reference(_OP, named, _CONSTS, _STRUCTS)
    return tuple(o.to(d) for o, d in zip(out, _OUT_DTYPES))
'''
