"""The eager torch baseline: what a user writes first, before any custom kernel.

Same public names and semantics as ``kernels.reference`` and ``kernels.triton`` (``docs/contract.md``), on any
device torch runs on, in float32 with one cast of the result to the contract's dtype:

- attention: gather a sequence's pages into a dense ``[L, Hkv, D]`` K/V, then matmul-softmax-matmul with the
  causal/window mask and soft-cap, the sinks as one more logit column of no value (a loop over sequences, as a
  first implementation would be);
- ``merge_states``: the log-sum-exp merge written with torch ops; ``write_kv``: an indexed store;
- grouped GEMMs: dequantize the whole weight stack, then one ``matmul`` per expert;
- ``route``: softmax and a stable sort; ``moe_permute``: a stable sort; ``fused_moe``: a loop over experts.

It is a baseline to compare against and a second, independent implementation of the contract for the parity
suite (the references are numpy and float64; this is torch and float32). Inputs are checked by the same
validators (``kernels.validate``, ``kernels.reference``) as everything else, so bad input raises the same
``ValueError``s; those checks read metadata on the host, as an eager baseline does. The weight quantizers
(``quantize_int4``, ``quantize_fp8``) are formats, not kernels: use ``kernels.reference``'s.
"""
from __future__ import annotations

import torch

from kernels.reference.gemm import check_dense, check_fp8, check_int4, check_mxfp4
from kernels.reference.moe import (FP8_ACT_GROUP, SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT, check_fused_moe, check_topk_ids,
                                   weight_kind)
from kernels.reference.norms import check_rms_norm, check_rotary
from kernels.reference.routing import check_route
from kernels.reference.quant import (AMAX_FLOOR, E2M1_VALUES, E4M3_MAX, E8M0_BIAS, E8M0_NAN, MX_BLOCK, check_act,
                                     check_act_group, check_int4_weight, check_mxfp4_weight)
from kernels.reference.sampling import check_rejection, check_sample
from kernels.validate import (check_attention, check_kv_write, check_merge_states, check_mla, check_split_control,
                               scalar)

__all__ = ["paged_decode", "paged_prefill", "merge_states", "write_kv", "grouped_gemm", "grouped_gemm_int4",
           "grouped_gemm_fp8", "grouped_gemm_mxfp4", "quantize_fp8_act", "route", "moe_permute", "fused_moe",
           "rms_norm", "fused_add_rms_norm", "rms_norm_quant_fp8", "rotary_embedding", "top_k_top_p_sample",
           "rejection_sample", "mla_decode"]


# ---------------------------------------------------------------------------------------------- attention

def _gather(cache, blocks, seq_len: int, scale: float) -> torch.Tensor:
    """One sequence's ``[seq_len, Hkv, D]`` rows of a paged cache, float32, times its scale."""
    rows = cache[blocks].reshape(-1, *cache.shape[2:])[:seq_len]
    return rows.float() * scale


def _attention(q, k_cache, v_cache, block_table, dims, sliding_window, soft_cap, k_scale, v_scale, sinks=None):
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
    ks, vs = scalar(k_scale, "k_scale"), scalar(v_scale, "v_scale")
    sink_bad = None if sinks is None else torch.isnan(sinks) | torch.isposinf(sinks)  # [H]: NaN rows
    for i in range(dims.num_seqs):
        lo, hi = int(dims.query_start_loc[i]), int(dims.query_start_loc[i + 1])
        seq_len = int(dims.seq_lens[i])
        if hi == lo:
            continue  # no query
        if seq_len == 0:  # no key: out 0, lse -inf, or the sink
            if sinks is not None:
                lse[lo:hi] = torch.where(sink_bad, float("nan"), sinks.float())
                out[lo:hi] = torch.where(sink_bad[:, None], float("nan"), 0.0)
            continue
        blocks = block_table[i, : -(-seq_len // dims.block_size)].long()
        k = _gather(k_cache, blocks, seq_len, ks).repeat_interleave(dims.group, dim=1)  # head h reads h // group
        v = _gather(v_cache, blocks, seq_len, vs).repeat_interleave(dims.group, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[lo:hi].float(), k) * dims.scale
        if soft_cap is not None:
            s = soft_cap * torch.tanh(s / soft_cap)
        pos = torch.arange(seq_len - (hi - lo), seq_len, device=q.device)[:, None]
        t = torch.arange(seq_len, device=q.device)[None, :]
        mask = t <= pos
        if sliding_window is not None:
            mask &= t > pos - sliding_window
        s = s.masked_fill(~mask, float("-inf"))
        if sinks is None:
            row_lse = torch.logsumexp(s, dim=-1)  # [H, Lq]; every query sees itself, so it is finite unless NaN
        else:  # the sink: one more logit in the denominator, with no value
            sink_col = sinks.float()[:, None, None].expand(-1, s.shape[1], 1)
            row_lse = torch.logsumexp(torch.cat([s, sink_col], dim=-1), dim=-1)
        p = torch.exp(s - row_lse[..., None])
        # a NaN value poisons the queries that see its key, and only those (0 * NaN would reach the others)
        v_nan = torch.isnan(v).any(dim=-1).T  # [H, Lk]
        poisoned = (mask[None] & v_nan[:, None, :]).any(dim=-1)  # [H, Lq]
        if sinks is not None:
            poisoned = poisoned | sink_bad[:, None]
        o = torch.einsum("hqk,khd->qhd", p, torch.where(torch.isnan(v), 0.0, v))
        out[lo:hi] = torch.where(poisoned.T[..., None], float("nan"), o)
        lse[lo:hi] = torch.where(poisoned, float("nan"), row_lse).T
    return out.to(q.dtype), lse


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None,
                  sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, return_lse=False, sinks=None):
    dims = check_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=scale,
                           sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale,
                           sinks=sinks)
    out, lse = _attention(q, k_cache, v_cache, block_table, dims, sliding_window, soft_cap, k_scale, v_scale, sinks)
    return (out, lse) if return_lse else out


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None, soft_cap=None,
                 k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, return_lse=False, sinks=None):
    """``num_splits``/``split_size`` choose a kernel's partitioning, not the math: an eager baseline has none
    (they are checked as the contract states them)."""
    check_split_control(num_splits, split_size)
    dims = check_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale, sliding_window=sliding_window,
                           soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale, sinks=sinks)
    out, lse = _attention(q, k_cache, v_cache, block_table, dims, sliding_window, soft_cap, k_scale, v_scale, sinks)
    return (out, lse) if return_lse else out


def mla_decode(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
               num_splits=None, split_size=None, query_start_loc=None, return_lse=False, batch_invariant=False):
    """MLA decode as a first implementation writes it: gather a sequence's latent rows, logits from both parts,
    softmax, ``P @ c``; one query per sequence, or causal ones with ``query_start_loc``. ``batch_invariant``
    holds by construction (each sequence is computed on its own)."""
    check_split_control(num_splits, split_size)
    dims = check_mla(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, query_start_loc, scale=scale,
                     kv_scale=kv_scale)
    dev = q_nope.device
    out = torch.zeros((dims.num_tokens, dims.num_heads, dims.rank), dtype=torch.float32, device=dev)
    lse = torch.full((dims.num_tokens, dims.num_heads), float("-inf"), dtype=torch.float32, device=dev)
    ks = scalar(kv_scale, "kv_scale")
    for i in range(dims.num_seqs):
        lo, hi = int(dims.query_start_loc[i]), int(dims.query_start_loc[i + 1])
        seq_len = int(dims.seq_lens[i])
        if hi == lo or seq_len == 0:
            continue  # no query, or no key: out 0, lse -inf
        blocks = block_table[i, : -(-seq_len // dims.block_size)].long()
        c, kp = _gather(kv_c_cache, blocks, seq_len, ks), _gather(k_pe_cache, blocks, seq_len, ks)  # [L, R], [L, P]
        s = (torch.einsum("qhr,kr->hqk", q_nope[lo:hi].float(), c)
             + torch.einsum("qhp,kp->hqk", q_pe[lo:hi].float(), kp)) * dims.scale
        pos = torch.arange(seq_len - (hi - lo), seq_len, device=dev)[:, None]
        mask = torch.arange(seq_len, device=dev)[None, :] <= pos  # [Lq, L]
        s = s.masked_fill(~mask, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)  # [H, Lq]
        p = torch.exp(s - row_lse[..., None])
        poisoned = (mask & torch.isnan(c).any(dim=-1)[None, :]).any(dim=-1)  # [Lq]: a NaN value it sees
        o = torch.einsum("hqk,kr->qhr", p, torch.where(torch.isnan(c), 0.0, c))
        out[lo:hi] = torch.where(poisoned[:, None, None], float("nan"), o)
        lse[lo:hi] = torch.where(poisoned[:, None], float("nan"), row_lse.T)
    out = out.to(q_nope.dtype)
    return (out, lse) if return_lse else out


def merge_states(outs, lses):
    """``lse = log sum_s exp(lse_s)``, ``out = sum_s exp(lse_s - lse) out_s``; an -inf partial adds nothing
    (its out may hold NaN), a NaN or +inf partial makes the row NaN."""
    check_merge_states(outs, lses)
    lses = lses.float()
    bad = (torch.isnan(lses) | (lses == float("inf"))).any(dim=0)
    lse = torch.logsumexp(lses, dim=0)  # -inf where every partial is empty
    empty = lse == float("-inf")
    w = torch.exp(lses - torch.where(empty, 0.0, lse))  # exactly 0 for an empty partial
    contrib = torch.where((w > 0)[..., None], w[..., None] * outs.float(), 0.0)
    out = torch.where(empty[..., None], 0.0, contrib.sum(dim=0))
    nan = torch.tensor(float("nan"), device=lses.device)
    out = torch.where(bad[..., None], nan, out)
    lse = torch.where(bad, nan, lse)
    return out.to(outs.dtype), lse


def write_kv(key, value, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0):
    check_kv_write(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blk, off = slots // k_cache.shape[1], slots % k_cache.shape[1]
    for src, cache, s, name in ((key, k_cache, k_scale, "k_scale"), (value, v_cache, v_scale, "v_scale")):
        vals = src[keep]
        if cache.dtype == torch.float8_e4m3fn:  # x / scale in float64: one rounding onto the e4m3 grid
            vals = (vals.double() / scalar(s, name)).clamp(-E4M3_MAX, E4M3_MAX)
        cache[blk, off] = vals.to(cache.dtype)
    return k_cache, v_cache


# ------------------------------------------------------------------------------------------ grouped GEMMs

def _grouped(a: torch.Tensor, w: torch.Tensor, offs, out_dtype: str) -> torch.Tensor:
    """``a [T, K]`` float32 times the float32 stack ``w [E, N, K]``, expert e on rows ``offs[e]:offs[e+1]``."""
    y = torch.zeros((a.shape[0], w.shape[1]), dtype=torch.float32, device=a.device)
    for e in range(w.shape[0]):
        lo, hi = int(offs[e]), int(offs[e + 1])
        if hi > lo:
            y[lo:hi] = a[lo:hi] @ w[e].T
    return y.to(getattr(torch, out_dtype))


def dequantize_int4(weight) -> torch.Tensor:
    """float32 ``[E, N, K]``: low nibble = even k, ``(nibble - zero) * scale`` (zero 8 without zero points)."""
    check_int4_weight(weight)
    q = weight.qweight
    nib = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(*q.shape[:-1], -1).float()
    g = int(weight.group_size)
    zeros = 8.0 if weight.zeros is None else weight.zeros.float().repeat_interleave(g, dim=-1)
    return (nib - zeros) * weight.scales.float().repeat_interleave(g, dim=-1)


def dequantize_mxfp4(weight) -> torch.Tensor:
    """float32 ``[E, N, K]``: the E2M1 value of each code (low nibble = even k, bit 3 the sign) times
    ``2**(e - 127)`` of its block of 32 (NaN for e = 255)."""
    check_mxfp4_weight(weight)
    q = weight.data
    codes = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(*q.shape[:-1], -1).long()
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=q.device)
    values = torch.where(codes >= 8, -table[codes & 7], table[codes & 7])
    e = weight.scales.long()
    scale = torch.where(e == E8M0_NAN, float("nan"), torch.exp2((e - E8M0_BIAS).float()))
    return values * scale.repeat_interleave(MX_BLOCK, dim=-1)


def dequantize_fp8(weight) -> torch.Tensor:
    """float32 ``[E, N, K]``: each element times its granule's scale."""
    data, s = weight.data.float(), weight.scales.float()
    if weight.granularity == "tensor":
        return data * s[:, None, None]
    if weight.granularity == "channel":
        return data * s[:, :, None]
    bn, bk = weight.block_size
    n, k = data.shape[1:]
    return data * s.repeat_interleave(bn, dim=1)[:, :n].repeat_interleave(bk, dim=2)[:, :, :k]


def grouped_gemm(a, w, group_offsets, *, out_dtype=None):
    offs, _, _, _, out = check_dense(a, w, group_offsets, out_dtype)
    return _grouped(a.float(), w.float(), offs, out)


def grouped_gemm_int4(a, weight, group_offsets, *, out_dtype=None):
    offs, _, _, _, out = check_int4(a, weight, group_offsets, out_dtype)
    return _grouped(a.float(), dequantize_int4(weight), offs, out)


def grouped_gemm_mxfp4(a, weight, group_offsets, *, bias=None, out_dtype=None):
    offs, _, _, _, out = check_mxfp4(a, weight, group_offsets, bias, out_dtype)
    y = _grouped(a.float(), dequantize_mxfp4(weight), offs, "float32")
    if bias is not None:
        counts = torch.as_tensor(offs[1:] - offs[:-1], device=bias.device)
        y = y + bias.float().repeat_interleave(counts, dim=0)  # bias[e] on each of expert e's rows
    return y.to(getattr(torch, out))


def grouped_gemm_fp8(a_fp8, a_scales, weight, group_offsets, *, out_dtype=torch.bfloat16):
    offs, _, _, k, g, out = check_fp8(a_fp8, a_scales, weight, group_offsets, out_dtype)
    a = a_fp8.float() * a_scales.repeat_interleave(g, dim=1)[:, :k]
    return _grouped(a, dequantize_fp8(weight), offs, out)


def quantize_fp8_act(a, group_size: int = 128):
    """Per token-group: ``scale = max(amax, 2**-32) / 448`` in float32 (an all-zero group gets a finite scale),
    then ``e4m3(clamp(float32(x / scale), +-448))``."""
    check_act(a)
    t, k = (int(s) for s in a.shape)
    g = check_act_group(group_size, k)
    ng = -(-k // g)
    padded = torch.zeros((t, ng * g), dtype=torch.float32, device=a.device)
    padded[:, :k] = a.float().abs()
    amax = padded.reshape(t, ng, g).amax(dim=-1)
    scales = torch.clamp(amax, min=AMAX_FLOOR) / E4M3_MAX
    scaled = (a.double() / scales.double().repeat_interleave(g, dim=1)[:, :k]).float()
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scales


# ------------------------------------------------------------------------------------------------ MoE

def route(router_logits, top_k: int, *, renormalize: bool = True, scoring: str = "softmax", correction_bias=None,
          num_groups=None, topk_groups=None, routed_scaling_factor: float = 1.0):
    check_route(router_logits, top_k, scoring=scoring, correction_bias=correction_bias, num_groups=num_groups,
                topk_groups=topk_groups, routed_scaling_factor=routed_scaling_factor)
    logits = router_logits.float()
    s = torch.softmax(logits, dim=1) if scoring == "softmax" else torch.sigmoid(logits)
    choice = s if correction_bias is None else s + correction_bias.float()
    # a NaN ranks lowest (ids stay in [0, E)); without a bias, rank on the logits (the same order as s)
    ranked = torch.nan_to_num(logits if correction_bias is None else choice, nan=float("-inf"))
    if num_groups is not None:
        t, e = logits.shape
        grouped = torch.nan_to_num(choice, nan=float("-inf")).view(t, num_groups, e // num_groups)
        scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        kept = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :topk_groups]
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, kept, True)
        ranked = ranked.masked_fill(~keep.repeat_interleave(e // num_groups, dim=1), float("-inf"))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices  # ties: lower id first
    ids = order[:, :top_k]
    weights = s.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=1, keepdim=True)
    weights = torch.where(logits.isnan().any(dim=1, keepdim=True), float("nan"), weights)  # a sigmoid's NaN stays put
    return ids.to(torch.int32), weights * routed_scaling_factor


def moe_permute(topk_ids, num_experts: int):
    check_topk_ids(topk_ids, num_experts)
    flat = topk_ids.reshape(-1).long()
    sorted_index = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return sorted_index, offsets


def _dense_stack(w) -> torch.Tensor:
    kind = weight_kind(w)
    if kind == "int4":
        return dequantize_int4(w)
    if kind == "fp8":
        return dequantize_fp8(w)
    if kind == "mxfp4":
        return dequantize_mxfp4(w)
    return (w if w.dim() == 3 else w[None]).float()


def _fp8_round_trip(a: torch.Tensor) -> torch.Tensor:
    """``a`` after the per-token-group (128) fp8 quantization the fp8 path applies, dequantized."""
    a8, s = quantize_fp8_act(a, FP8_ACT_GROUP)
    return a8.float() * s.repeat_interleave(FP8_ACT_GROUP, dim=1)[:, : a.shape[1]]


def _swiglu_oai(gu: torch.Tensor) -> torch.Tensor:
    """gpt-oss's activation on interleaved (gate, up) columns: clamp, ``gate * sigmoid(1.702 gate) * (up + 1)``."""
    gate = gu[:, 0::2].clamp(max=SWIGLU_OAI_LIMIT)
    up = gu[:, 1::2].clamp(-SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT)
    return gate * torch.sigmoid(SWIGLU_OAI_ALPHA * gate) * (up + 1)


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation: str = "silu", w13_bias=None, w2_bias=None):
    num_tokens, hidden, inter, num_experts, top_k, kind, _ = check_fused_moe(
        x, w13, w2, topk_ids, topk_weights, activation, w13_bias=w13_bias, w2_bias=w2_bias)
    w13d, w2d = _dense_stack(w13), _dense_stack(w2)
    act = _fp8_round_trip if kind == "fp8" else (lambda a: a)
    out = torch.zeros((num_tokens, hidden), dtype=torch.float32, device=x.device)
    ids = topk_ids.long()
    for e in range(num_experts):
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        gu = act(x[tok].float()) @ w13d[e].T
        if w13_bias is not None:
            gu = gu + w13_bias[e].float()
        if activation == "swiglu_oai":
            h = _swiglu_oai(gu)
        else:
            h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
        y = act(h) @ w2d[e].T
        if w2_bias is not None:
            y = y + w2_bias[e].float()
        out.index_add_(0, tok, y * topk_weights[tok, slot].float()[:, None])
    return out.to(x.dtype)



# ------------------------------------------------------------------------------------------ norms, RoPE

def _norm(x32: torch.Tensor, weight, eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    """float32 RMSNorm of float32 rows."""
    return x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps) * (weight_offset + weight.float())


def rms_norm(x, weight, *, eps, weight_offset=0.0):
    check_rms_norm(x, weight, eps, weight_offset)
    return _norm(x.float(), weight, eps, weight_offset).to(x.dtype)


def fused_add_rms_norm(x, residual, weight, *, eps):
    check_rms_norm(x, weight, eps, residual=residual)
    residual.copy_(residual.float() + x.float())
    return _norm(residual.float(), weight, eps).to(x.dtype)


def rms_norm_quant_fp8(x, weight, *, eps, group_size):
    check_rms_norm(x, weight, eps)
    return quantize_fp8_act(_norm(x.float(), weight, eps), group_size)


def rotary_embedding(positions, q, k, cos_sin_cache, *, is_neox, rotary_dim=None):
    rd = check_rotary(positions, q, k, cos_sin_cache, is_neox, rotary_dim)
    cos, sin = cos_sin_cache[positions.long()].float()[:, None].chunk(2, dim=-1)  # [T, 1, rd / 2] each
    for t in (q, k):
        x = t[..., :rd].float()
        a, b = (x[..., :rd // 2], x[..., rd // 2:]) if is_neox else (x[..., 0::2], x[..., 1::2])
        ra, rb = a * cos - b * sin, b * cos + a * sin
        rotated = torch.cat([ra, rb], dim=-1) if is_neox else torch.stack([ra, rb], dim=-1).flatten(-2)
        t[..., :rd] = rotated.to(t.dtype)
    return q, k
# ----------------------------------------------------------------------------------------------- sampling

def _per_row(x, batch: int, dtype, device) -> torch.Tensor:
    return x.to(device, dtype) if isinstance(x, torch.Tensor) else torch.full((batch,), x, dtype=dtype, device=device)


def kept_tokens(logits, temperature, top_k, top_p):
    """``(kept bool [B, V], probs float32 [B, V], greedy [B], unusable [B])``: sort the row (the way a first
    implementation does it), cut top-k at the k-th sorted value (ties kept), cut top-p on the exclusive
    cumulative mass of the sorted row (a tie group takes its first member's)."""
    batch, vocab = logits.shape
    x = logits.float()
    t = _per_row(temperature, batch, torch.float32, x.device)
    k = _per_row(top_k, batch, torch.int64, x.device)
    p = _per_row(top_p, batch, torch.float32, x.device)
    bad = torch.isnan(x).any(1) | torch.isposinf(x).any(1) | torch.isneginf(x).all(1)
    greedy = t == 0
    s = torch.where(bad[:, None], 0.0, x) / torch.where(greedy, 1.0, t)[:, None]
    sorted_s, order = torch.sort(s, dim=1, descending=True, stable=True)
    k_eff = torch.where((k > 0) & (k < vocab), k, vocab)
    in_k = s >= sorted_s.gather(1, (k_eff - 1)[:, None])
    probs = torch.softmax(s, dim=1)
    pk = torch.where(in_k, probs, 0.0)
    sorted_pk = pk.gather(1, order)
    exclusive = torch.cumsum(sorted_pk, dim=1) - sorted_pk
    pos = torch.arange(vocab, device=x.device).expand(batch, vocab)
    new_group = torch.ones_like(sorted_s, dtype=torch.bool)
    new_group[:, 1:] = sorted_s[:, 1:] != sorted_s[:, :-1]
    group_start = torch.cummax(torch.where(new_group, pos, 0), dim=1).values
    above = torch.empty_like(exclusive).scatter_(1, order, exclusive.gather(1, group_start))
    in_p = (above < p[:, None] * pk.sum(1, keepdim=True)) | (p[:, None] >= 1)
    top = torch.where(bad[:, None], 0.0, x)
    kept = torch.where(greedy[:, None], pos == torch.argmax(top, dim=1, keepdim=True), in_k & in_p & (probs > 0))
    return kept & ~bad[:, None], probs, greedy, bad


def top_k_top_p_sample(logits, *, temperature, top_k, top_p, noise=None):
    """``kept_tokens``, then the race (a greedy row: its argmax)."""
    check_sample(logits, temperature, top_k, top_p, noise)
    kept, probs, greedy, bad = kept_tokens(logits, temperature, top_k, top_p)
    e = torch.empty_like(probs).exponential_() if noise is None else noise.float()
    race = torch.where(kept, torch.where(greedy[:, None], 1.0, probs / e), -1.0)
    return torch.where(bad, -1, torch.argmax(race, dim=1))


def rejection_sample(draft_token_ids, draft_probs, target_probs, bonus_token_ids, *, uniforms, recovery_noise,
                     num_draft_tokens):
    """Every position's acceptance and recovered token at once, then a loop over the requests for the first
    rejection."""
    counts, vocab = check_rejection(draft_token_ids, draft_probs, target_probs, bonus_token_ids, uniforms,
                                    recovery_noise, num_draft_tokens)
    ids = draft_token_ids.long()
    target = target_probs.float()
    noise = recovery_noise.float()
    choice = torch.argmax(target / noise, dim=1)
    if draft_probs is None:
        accepted, recovered = ids == choice, choice
    else:
        draft = draft_probs.float()
        rows = torch.arange(ids.numel(), device=ids.device)
        accepted = (target[rows, ids] > 0) & (uniforms.float() * draft[rows, ids] <= target[rows, ids])
        residual = torch.clamp(target - draft, min=0.0)
        recovered = torch.where((residual > 0).any(1), torch.argmax(residual / noise, dim=1), choice)
    out = torch.full((counts.size, int(counts.max(initial=0)) + 1), -1, dtype=torch.int64, device=ids.device)
    emitted = torch.where(accepted, ids, recovered)
    bonus = bonus_token_ids.reshape(-1).long()
    acc, start = accepted.cpu().tolist(), 0
    for b, n in enumerate(counts.tolist()):
        first_reject = next((i for i in range(n) if not acc[start + i]), n)
        last = min(first_reject + 1, n)
        out[b, :last] = emitted[start:start + last]
        if first_reject == n:
            out[b, n] = bonus[b]
        start += n
    return out
