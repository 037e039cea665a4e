"""FLOPs and minimum bytes of every op, from its shape.

Minimum bytes = each input byte the op must read, read once, plus each output byte written once (the
"compulsory" traffic: the best any kernel can do with a cold cache). Intermediates of fused ops (the MoE's
gate/up activations) stay on chip in that minimum; a kernel that spills them shows it in counted traffic.

FLOP conventions (a multiply-add is 2 FLOPs, as in every vendor peak):
- attention: ``QK^T`` and ``PV`` are 2 * D FLOPs each per (query, visible key, query head); softmax
  exponentials are not counted (they run on the SFU, not the tensor cores). Decode: ``4 * sum(seq_len) * Hq * D``.
  Causal prefill counts only visible (query, key) pairs, i.e. about half of the square for a full prefill.
- GEMM: ``2 * T * N * K``; dequantization is not counted (it is overhead, not useful work).
- merge_states: 2 FLOPs per partial output element (scale, add) plus 4 per partial LSE (max, sub, exp, add).

Small metadata (block tables, lengths, offsets, routing ids) is counted: it is real traffic, and a kernel that
re-reads it shows up. fp8 scales passed as Python floats are kernel arguments, not memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}


def nbytes(dtype) -> int:
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype: unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


@dataclass
class Cost:
    """FLOPs, minimum bytes (with a per-operand breakdown) and the dtype the FLOPs run at."""

    flops: float
    bytes_min: float
    compute_dtype: str
    breakdown: dict = field(default_factory=dict)  # operand -> bytes (reads and writes)

    @property
    def intensity(self) -> float:
        """FLOPs per minimum byte."""
        return self.flops / self.bytes_min if self.bytes_min else math.inf

    def roof(self, spec) -> dict:
        """Roofline time on ``spec`` (a GpuSpec): max(compute time, memory time), and which one binds."""
        t_compute = self.flops / spec.peak(self.compute_dtype)
        t_memory = self.bytes_min / spec.hbm_bytes_per_s
        return {"t_roof_s": max(t_compute, t_memory), "t_compute_s": t_compute, "t_memory_s": t_memory,
                "bound": "memory" if t_memory >= t_compute else "compute"}


def _cost(flops, compute_dtype, **parts) -> Cost:
    parts = {k: float(v) for k, v in parts.items() if v}
    return Cost(float(flops), float(sum(parts.values())), str(compute_dtype), parts)


def _ints(x, name) -> list[int]:
    vals = [int(v) for v in (x if hasattr(x, "__iter__") else [x])]
    if any(v < 0 for v in vals):
        raise ValueError(f"{name}: lengths must be >= 0, got {vals}")
    return vals


# ----------------------------------------------------------------------------------------------- attention

def paged_decode(seq_lens, *, num_q_heads, num_kv_heads, head_dim, block_size, dtype="bfloat16", kv_dtype=None,
                 return_lse=False, sliding_window=None, sinks=False) -> Cost:
    """One query per sequence over the cached keys it sees (its ``seq_len``, or the last ``sliding_window`` of
    them): each of those K/V bytes is read once (per KV head), and the block-table entries of their blocks;
    ``sinks``: the float32 sink of each query head, read once (they add no FLOPs worth counting)."""
    lens = _ints(seq_lens, "seq_lens")
    seen = [min(L, sliding_window) if sliding_window else L for L in lens]
    n, tokens = len(lens), sum(seen)
    qb, kvb = nbytes(dtype), nbytes(kv_dtype or dtype)
    return _cost(
        4 * tokens * num_q_heads * head_dim, dtype,
        q=n * num_q_heads * head_dim * qb,
        kv_cache=2 * tokens * num_kv_heads * head_dim * kvb,
        block_table=sum(-(-L // block_size) - (L - k) // block_size for L, k in zip(lens, seen)) * 4,
        seq_lens=n * 4,
        sinks=num_q_heads * 4 if sinks else 0,
        out=n * num_q_heads * head_dim * qb,
        lse=n * num_q_heads * 4 if return_lse else 0,
    )


def _visible_pairs(q_len: int, seq_len: int, window: int | None) -> tuple[int, int]:
    """(visible (query, key) pairs, keys any query sees) for a bottom-right-aligned causal chunk."""
    first = seq_len - q_len  # position of the chunk's first query
    pos = range(first, seq_len)
    if window is None:
        pairs = q_len * first + q_len * (q_len + 1) // 2
        keys = seq_len if q_len else 0
    else:
        pairs = sum(min(p + 1, window) for p in pos)
        keys = (seq_len - max(0, first - window + 1)) if q_len else 0
    return pairs, keys


def paged_prefill(q_lens, seq_lens, *, num_q_heads, num_kv_heads, head_dim, block_size, dtype="bfloat16",
                  kv_dtype=None, sliding_window=None, return_lse=False, sinks=False) -> Cost:
    """Varlen causal attention: FLOPs over visible pairs only; the K/V a chunk's queries can see, read once;
    ``sinks``: the float32 sink of each query head, read once."""
    ql, sl = _ints(q_lens, "q_lens"), _ints(seq_lens, "seq_lens")
    if len(ql) != len(sl) or any(q > s for q, s in zip(ql, sl)):
        raise ValueError("q_lens: need one per sequence, each <= its seq_len")
    qb, kvb = nbytes(dtype), nbytes(kv_dtype or dtype)
    pairs = keys = blocks = 0
    for q, s in zip(ql, sl):
        p, k = _visible_pairs(q, s, sliding_window)
        pairs, keys = pairs + p, keys + k
        blocks += (-(-s // block_size) - (s - k) // block_size) if q else 0
    tokens = sum(ql)
    return _cost(
        4 * pairs * num_q_heads * head_dim, dtype,
        q=tokens * num_q_heads * head_dim * qb,
        kv_cache=2 * keys * num_kv_heads * head_dim * kvb,
        block_table=blocks * 4,
        seq_lens=len(sl) * 4,
        query_start_loc=(len(sl) + 1) * 4,
        sinks=num_q_heads * 4 if sinks else 0,
        out=tokens * num_q_heads * head_dim * qb,
        lse=tokens * num_q_heads * 4 if return_lse else 0,
    )


def mla_decode(seq_lens, q_lens=1, *, num_heads, rank, rope, block_size, dtype="bfloat16", kv_dtype=None,
               return_lse=False) -> Cost:
    """MLA decode: H query heads over one latent head (``K = [c, k_pe]``, ``V = c``). FLOPs: ``2 (R + P)`` for
    ``QK^T`` and ``2 R`` for ``PV`` per (query, visible key, head). Bytes: each sequence's latent tokens
    (``R + P`` values) read once for all its heads and queries, their block-table entries, the queries, the
    lengths (and ``query_start_loc`` with ``q_lens`` a list), the output (and LSE)."""
    sl = _ints(seq_lens, "seq_lens")
    multi = not isinstance(q_lens, int)
    ql = _ints(q_lens, "q_lens") if multi else [q_lens] * len(sl)
    if len(ql) != len(sl) or any(q > s for q, s in zip(ql, sl) if multi):
        raise ValueError("q_lens: need one per sequence, each <= its seq_len")
    qb, kvb = nbytes(dtype), nbytes(kv_dtype or dtype)
    pairs = sum(_visible_pairs(q, s, None)[0] if s else 0 for q, s in zip(ql, sl))
    tokens = sum(ql)
    return _cost(
        pairs * num_heads * (2 * (rank + rope) + 2 * rank), dtype,
        q=tokens * num_heads * (rank + rope) * qb,
        kv_cache=sum(sl) * (rank + rope) * kvb,
        block_table=sum(-(-s // block_size) for s in sl) * 4,
        seq_lens=len(sl) * 4,
        query_start_loc=(len(sl) + 1) * 4 if multi else 0,
        out=tokens * num_heads * rank * qb,
        lse=tokens * num_heads * 4 if return_lse else 0,
    )


def prefill_fa2_bytes(q_lens, seq_lens, *, num_q_heads, head_dim, dtype="bfloat16", kv_dtype=None,
                      block_m: int = 128) -> float:
    """Traffic of the FlashAttention-2 schedule: one program per (query tile of ``block_m``, query head) reads
    Q and writes O once, and re-reads every K/V row its tile can see (causal: up to the tile's last query).
    The prefill goal is counted traffic at or below this."""
    qb, kvb = nbytes(dtype), nbytes(kv_dtype or dtype)
    total = 0
    for q, s in zip(_ints(q_lens, "q_lens"), _ints(seq_lens, "seq_lens")):
        first = s - q
        for j0 in range(0, q, block_m):
            last_pos = first + min(j0 + block_m, q) - 1
            total += (last_pos + 1) * 2 * head_dim * kvb * num_q_heads
        total += 2 * q * num_q_heads * head_dim * qb
    return float(total)


def merge_states(num_states, num_tokens, num_heads, head_dim, *, dtype="bfloat16", empty_rows=0) -> Cost:
    """``empty_rows``: (state, token, head) partials with LSE -inf, whose ``out`` rows need not be read (they
    contribute nothing); their LSE is still read."""
    b = nbytes(dtype)
    elems = num_tokens * num_heads
    return _cost(
        2 * num_states * elems * head_dim + 4 * num_states * elems, "fp32",
        outs=(num_states * elems - empty_rows) * head_dim * b,
        lses=num_states * elems * 4,
        out=elems * head_dim * b,
        lse=elems * 4,
    )


def write_kv(num_tokens, *, num_kv_heads, head_dim, dtype="bfloat16", kv_dtype=None, valid_tokens=None,
             slot_dtype="int64") -> Cost:
    """Scatter K and V rows into the cache; a skipped token (slot < 0) need not be read nor written."""
    valid = num_tokens if valid_tokens is None else valid_tokens
    kvb = nbytes(kv_dtype or dtype)
    fp8 = str(kv_dtype).replace("torch.", "") == "float8_e4m3fn"
    return _cost(
        2 * valid * num_kv_heads * head_dim if fp8 else 0, "fp32",
        key_value=2 * valid * num_kv_heads * head_dim * nbytes(dtype),
        slot_mapping=num_tokens * nbytes(slot_dtype),
        kv_cache=2 * valid * num_kv_heads * head_dim * kvb,
    )


# --------------------------------------------------------------------------------------------- GEMM / MoE

def route(tokens, experts, top_k, *, dtype="float32", bias=False, groups=0) -> Cost:
    """Read each router logit once (and the selection bias), write k ids (int32) and k weights (float32) per
    token. FLOPs: per logit the score (shift, exp, sum, divide), the bias add, and one compare per round of the
    top-k selection (and of the group selection)."""
    return _cost(
        tokens * experts * (4 + (1 if bias else 0) + top_k + (2 if groups else 0)), "fp32",
        router_logits=tokens * experts * nbytes(dtype),
        correction_bias=experts * 4 if bias else 0,
        topk_ids=tokens * top_k * 4,
        topk_weights=tokens * top_k * 4,
    )


def _groups(group_sizes) -> tuple[int, int, int]:
    sizes = _ints(group_sizes, "group_sizes")
    return sum(sizes), len(sizes), sum(1 for s in sizes if s > 0)


def grouped_gemm(group_sizes, n, k, *, dtype="bfloat16", out_dtype=None, offsets_dtype="int32") -> Cost:
    """``y[rows of e] = a[rows of e] @ w[e].T``: the weights of experts with no rows need not be read."""
    t, e, active = _groups(group_sizes)
    return _cost(
        2 * t * n * k, dtype,
        a=t * k * nbytes(dtype),
        weight=active * n * k * nbytes(dtype),
        group_offsets=(e + 1) * nbytes(offsets_dtype),
        out=t * n * nbytes(out_dtype or dtype),
    )


def int4_weight_bytes(experts, n, k, group_size, *, zero_point=False, scale_dtype="float32") -> dict:
    return {"qweight": experts * n * (k // 2),
            "scales": experts * n * (k // group_size) * nbytes(scale_dtype),
            "zeros": experts * n * (k // group_size) if zero_point else 0}


def mxfp4_weight_bytes(experts, n, k) -> dict:
    """MXFP4: 4-bit codes plus one 1-byte E8M0 scale per 32 k, 4.25 bits per weight."""
    return {"data": experts * n * (k // 2), "scales": experts * n * (k // 32)}


def fp8_weight_bytes(experts, n, k, *, granularity="block", block_size=(128, 128), scale_dtype="float32") -> dict:
    nscales = {"tensor": 1, "channel": n,
               "block": -(-n // block_size[0]) * -(-k // block_size[1])}[granularity]
    return {"data": experts * n * k, "scales": experts * nscales * nbytes(scale_dtype)}


def grouped_gemm_int4(group_sizes, n, k, *, group_size=128, zero_point=False, dtype="bfloat16", out_dtype=None,
                      scale_dtype="float32", offsets_dtype="int32") -> Cost:
    """int4 weight-only: packed nibbles plus per-group scales (and zeros) of the active experts; the FLOPs run
    at the activation dtype (weights are dequantized to it on chip)."""
    t, e, active = _groups(group_sizes)
    w = int4_weight_bytes(active, n, k, group_size, zero_point=zero_point, scale_dtype=scale_dtype)
    return _cost(2 * t * n * k, dtype, a=t * k * nbytes(dtype), weight=sum(w.values()),
                 group_offsets=(e + 1) * nbytes(offsets_dtype), out=t * n * nbytes(out_dtype or dtype))


def grouped_gemm_mxfp4(group_sizes, n, k, *, bias=False, dtype="bfloat16", out_dtype=None,
                       offsets_dtype="int32") -> Cost:
    """MXFP4 weight-only (W4A16): codes and E8M0 scales of the active experts (4.25 bits per weight) and, with a
    bias, their float32 bias rows; the FLOPs run at the activation dtype (weights dequantized on chip)."""
    t, e, active = _groups(group_sizes)
    w = mxfp4_weight_bytes(active, n, k)
    return _cost(2 * t * n * k, dtype, a=t * k * nbytes(dtype), weight=sum(w.values()),
                 bias=active * n * 4 if bias else 0, group_offsets=(e + 1) * nbytes(offsets_dtype),
                 out=t * n * nbytes(out_dtype or dtype))


def grouped_gemm_fp8(group_sizes, n, k, *, act_group_size=128, granularity="block", block_size=(128, 128),
                     out_dtype="bfloat16", scale_dtype="float32", offsets_dtype="int32") -> Cost:
    """fp8 x fp8 with per-token-group activation scales and tensor/channel/block weight scales."""
    t, e, active = _groups(group_sizes)
    w = fp8_weight_bytes(active, n, k, granularity=granularity, block_size=block_size, scale_dtype=scale_dtype)
    return _cost(2 * t * n * k, "float8_e4m3fn", a=t * k, a_scales=t * -(-k // act_group_size) * 4,
                 weight=sum(w.values()), group_offsets=(e + 1) * nbytes(offsets_dtype),
                 out=t * n * nbytes(out_dtype))


def fused_moe(tokens, hidden, intermediate, expert_counts, top_k, *, weight_format="bf16", dtype="bfloat16",
              group_size=128, zero_point=False, scale_dtype="float32") -> Cost:
    """Routed SwiGLU MLP: ``P = tokens * top_k`` rows through w13 (``2I x H``) and w2 (``H x I``) of the
    experts they chose. ``expert_counts[e]`` = (token, slot) pairs routed to e; only active experts' weights
    are read. SiLU-and-mul is 5 FLOPs per intermediate element (exp, add, div, mul, mul), the weighted
    combine 2 per output element per slot."""
    p, _, active = _groups(expert_counts)
    if p != tokens * top_k:
        raise ValueError(f"expert_counts: sums to {p}, expected tokens * top_k = {tokens * top_k}")
    flops = 2 * p * 2 * intermediate * hidden + 2 * p * hidden * intermediate + 5 * p * intermediate \
        + 2 * p * hidden
    if weight_format in ("bf16", "fp16", "fp32", "dense"):
        wb = nbytes(dtype)
        w13, w2 = active * 2 * intermediate * hidden * wb, active * hidden * intermediate * wb
        compute = dtype
    elif weight_format == "int4":
        w13 = sum(int4_weight_bytes(active, 2 * intermediate, hidden, group_size, zero_point=zero_point,
                                    scale_dtype=scale_dtype).values())
        w2 = sum(int4_weight_bytes(active, hidden, intermediate, group_size, zero_point=zero_point,
                                   scale_dtype=scale_dtype).values())
        compute = dtype
    elif weight_format == "mxfp4":
        # codes and scales, plus the per-expert float32 biases of both GEMMs (gpt-oss has them)
        w13 = sum(mxfp4_weight_bytes(active, 2 * intermediate, hidden).values()) + active * 2 * intermediate * 4
        w2 = sum(mxfp4_weight_bytes(active, hidden, intermediate).values()) + active * hidden * 4
        compute = dtype
    elif weight_format == "fp8":
        w13 = sum(fp8_weight_bytes(active, 2 * intermediate, hidden, scale_dtype=scale_dtype).values())
        w2 = sum(fp8_weight_bytes(active, hidden, intermediate, scale_dtype=scale_dtype).values())
        compute = "float8_e4m3fn"
    else:
        raise ValueError(f"weight_format: expected bf16, int4, fp8 or mxfp4, got {weight_format!r}")
    return _cost(flops, compute, x=tokens * hidden * nbytes(dtype), w13=w13, w2=w2,
                 topk_ids=p * 4, topk_weights=p * 4, out=tokens * hidden * nbytes(dtype))



# --------------------------------------------------------------------------------------- norms and RoPE

def rms_norm(tokens, hidden, *, dtype="bfloat16", weight_dtype=None, residual_dtype=None, out_dtype=None,
             group_size=None) -> Cost:
    """RMSNorm of ``tokens`` rows of ``hidden``: x read once, the weight once, y written once; with
    ``residual_dtype`` (the fused add) the residual is read and written once too; with ``group_size`` (the fused
    fp8 quantization) y is float8 and one float32 scale per token group is written. FLOPs: 4 per element (square
    and add, the two multiplies), 2 more for the add, 2 more for the quantization (divide, round)."""
    elems = tokens * hidden
    fused, quant = residual_dtype is not None, group_size is not None
    groups = tokens * -(-hidden // min(group_size, hidden)) if quant and hidden else 0
    return _cost(
        elems * (4 + 2 * fused + 2 * quant), "fp32",
        x=elems * nbytes(dtype), weight=hidden * nbytes(weight_dtype or dtype),
        residual=2 * elems * nbytes(residual_dtype) if fused else 0,
        out=elems * nbytes("float8_e4m3fn" if quant else (out_dtype or dtype)), scales=groups * 4,
    )


def rotary_embedding(tokens, *, num_q_heads, num_kv_heads, rotary_dim, dtype="bfloat16", cache_dtype="float32",
                     positions_dtype="int64") -> Cost:
    """RoPE in place: each token's position, its cos/sin row (``rotary_dim`` values) and the first
    ``rotary_dim`` dims of each q and k head read once and written once (the dims past ``rotary_dim`` are neither:
    an in-place op need not touch them). FLOPs: 3 per rotated element (two multiplies, one add)."""
    rotated = tokens * (num_q_heads + num_kv_heads) * rotary_dim
    return _cost(3 * rotated, "fp32", positions=tokens * nbytes(positions_dtype),
                 cos_sin_cache=tokens * rotary_dim * nbytes(cache_dtype), qk=2 * rotated * nbytes(dtype))
# ------------------------------------------------------------------------------------------------- sampling

def top_k_top_p_sample(batch, vocab, *, dtype="bfloat16", per_row=False) -> Cost:
    """One read of the logits, the sampled ids written (int64), and the per-row parameters when they are tensors
    (temperature and top_p float32, top_k int64). The noise is left out: only the kept tokens' noise need be read,
    and how many are kept depends on the values, not the shape. FLOPs: a scale, an exp and a compare a logit."""
    return _cost(
        3 * batch * vocab, "fp32",
        logits=batch * vocab * nbytes(dtype),
        params=batch * 16 if per_row else 0,
        out=batch * 8,
    )


def rejection_sample(num_draft_tokens, vocab, *, probs_dtype="float32", has_draft_probs=True) -> Cost:
    """Draft verification: each draft position reads its draft token id, its uniform and the two probabilities of
    that token (a gather); each request with drafts is taken to reject once (the usual case: all k accepted is
    the rarer one), reading that position's target and draft rows and its noise once. Without draft probs every
    position needs the target's choice ``argmax(target / noise)``: its target row and noise, read once. The
    output is ``[B, max + 1]`` int64 and the bonus ids int64."""
    counts = _ints(num_draft_tokens, "num_draft_tokens")
    total, batch = sum(counts), len(counts)
    pb = nbytes(probs_dtype)
    rejecting = sum(1 for c in counts if c)
    return _cost(
        2 * (rejecting if has_draft_probs else total) * vocab, "fp32",
        draft=total * (8 + 4 + 2 * pb) if has_draft_probs else total * (8 + vocab * (pb + 4)),
        recovery=rejecting * vocab * (2 * pb + 4) if has_draft_probs else 0,
        bonus=batch * 8,
        out=batch * (max(counts, default=0) + 1) * 8,
    )
