"""The report's catalogue of real model shapes, and one adapter per op that builds inputs and checks outputs.

Each ``Case`` has a full shape (what the roofline models and a GPU measures) and a ``small`` shape with the same
head counts, head size, GQA ratio, block size, dtypes, expert count and routing skew but shorter contexts,
fewer tokens and narrower GEMMs: the interpreter runs that one for counted traffic and parity. Counted bytes
are reported at full size as ``(counted / minimum at the small shape) * minimum at full size``; that ratio is
what a kernel's schedule fixes (re-reads per head, per tile, per split), and it does not grow with size for the
schedules here (it can only shrink as fixed per-sequence overheads amortise, so the extrapolation is
conservative).

Models: Llama-3-8B attention (32 query / 8 KV heads x 128), Llama-3-70B (64 / 8 x 128), Mixtral-8x7B experts
(E 8, H 4096, I 14336, top-2), Qwen3-30B-A3B experts (E 128, H 2048, I 768, top-8).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from roofline import cost as C

LLAMA3_8B = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)
LLAMA3_70B = dict(num_q_heads=64, num_kv_heads=8, head_dim=128)
MIXTRAL = dict(experts=8, hidden=4096, intermediate=14336, top_k=2)
QWEN3_MOE = dict(experts=128, hidden=2048, intermediate=768, top_k=8)


@dataclass
class Case:
    op: str
    name: str
    shape: dict
    small: dict
    quick: bool = False
    goal: str = ""  # which goal this case tests ("decode_traffic", "gemm_traffic", "prefill_fa2", "decode_bw")
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ helpers

def ragged_lens(num_seqs: int, ctx: int, seed: int = 0) -> list[int]:
    """``num_seqs`` context lengths in ``(7/8 ctx, ctx]`` (ragged, deterministic); one sequence gets exactly ctx."""
    if num_seqs == 1:
        return [ctx]
    rng = np.random.default_rng(seed)
    lens = ctx - rng.integers(0, max(ctx // 8, 1), size=num_seqs)
    lens[0] = ctx
    return [int(v) for v in lens]


def expert_counts(tokens: int, experts: int, top_k: int, seed: int = 0) -> list[int]:
    """(token, slot) pairs per expert for ``tokens`` routed top-k with a skewed router (per-expert bias ~ N(0, 1)):
    realistic imbalance, some experts idle at decode sizes."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((tokens, experts)) + rng.standard_normal(experts)[None, :]
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    return [int(c) for c in np.bincount(ids.ravel(), minlength=experts)]


def _attn(seq_lens, q_lens, *, block_size=16, dtype="bfloat16", kv_dtype=None, **heads) -> dict:
    return dict(num_seqs=len(seq_lens), q_len=q_lens, seq_len=seq_lens, block_size=block_size, dtype=dtype,
                kv_dtype=kv_dtype or dtype, **heads)


def _gemm(rows_tokens, experts, top_k, n, k, *, group_size=None, dtype="bfloat16", seed=0, **extra) -> dict:
    counts = expert_counts(rows_tokens, experts, top_k, seed)
    return dict(tokens=sum(counts), n=n, k=k, experts=experts, group_size=group_size, dtype=dtype,
                group_sizes=counts, active_experts=sum(1 for c in counts if c), routed_tokens=rows_tokens,
                top_k=top_k, **extra)


# --------------------------------------------------------------------------------------------- catalogue

def decode_case(tag, batch, ctx, heads, *, kv_dtype=None, quick=False, model="llama3-8b") -> Case:
    full = _attn(ragged_lens(batch, ctx), 1, kv_dtype=kv_dtype, **heads)
    small_ctx = min(ctx, 512)
    small = _attn(ragged_lens(min(batch, 2), small_ctx, seed=1), 1, kv_dtype=kv_dtype, **heads)
    goal = "decode_bw" if batch * ctx >= 16384 else ""
    return Case("paged_decode", f"{model}/decode/{tag}", full, small, quick, goal)


# fused_moe counted at a prefill-sized T uses this many tokens: 160 rows over 8 experts, past the grouped GEMMs'
# decode regime (<= 16 rows per expert, kernels/triton/gemm_configs.py), so its expert GEMMs run the prefill tiles
# the full-size T = 1024 call uses (a test checks the regimes agree)
MOE_PREFILL_COUNT_TOKENS = 80


def catalogue() -> list[Case]:
    L8, L70 = LLAMA3_8B, LLAMA3_70B
    cases = [
        decode_case("b1-ctx1k", 1, 1024, L8),
        decode_case("b1-ctx8k", 1, 8192, L8, quick=True),
        decode_case("b1-ctx32k", 1, 32768, L8),
        decode_case("b64-ctx1k", 64, 1024, L8),
        decode_case("b64-ctx4k", 64, 4096, L8, quick=True),
        decode_case("b64-ctx32k", 64, 32768, L8),
        decode_case("b64-ctx4k-fp8kv", 64, 4096, L8, kv_dtype="float8_e4m3fn"),
        decode_case("b32-ctx8k", 32, 8192, L70, model="llama3-70b"),
    ]
    for c in cases:
        if c.shape["num_q_heads"] == 32 and c.shape["num_kv_heads"] == 8 and c.shape["head_dim"] == 128:
            c.goal = (c.goal + ",decode_traffic").strip(",")
    cases += [
        Case("paged_prefill", "llama3-8b/prefill/full-2k", _attn([2048], [2048], **L8),
             _attn([96], [96], **L8), True, "prefill_fa2"),
        Case("paged_prefill", "llama3-8b/prefill/chunk512-at-8k", _attn([8192], [512], **L8),
             _attn([160], [40], **L8), False, "prefill_fa2"),
        Case("paged_prefill", "llama3-8b/prefill/mixed-4seq",
             _attn([1024, 4096, 2048, 3000], [1024, 512, 256, 1], **L8),
             _attn([64, 96, 80, 70], [64, 24, 16, 1], **L8), False, "prefill_fa2"),
        Case("merge_states", "llama3-8b/merge/decode-b64-s2",
             dict(num_states=2, num_tokens=64, num_heads=32, head_dim=128, dtype="bfloat16"),
             dict(num_states=2, num_tokens=6, num_heads=32, head_dim=128, dtype="bfloat16"), True),
        Case("merge_states", "llama3-8b/merge/prefill-t2k-s2",
             dict(num_states=2, num_tokens=2048, num_heads=32, head_dim=128, dtype="bfloat16"),
             dict(num_states=2, num_tokens=12, num_heads=32, head_dim=128, dtype="bfloat16")),
        Case("write_kv", "llama3-8b/write_kv/decode-64",
             dict(num_tokens=64, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16",
                  kv_dtype="bfloat16", skipped=0),
             dict(num_tokens=12, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16",
                  kv_dtype="bfloat16", skipped=2), True),
        Case("write_kv", "llama3-8b/write_kv/prefill-2k-fp8",
             dict(num_tokens=2048, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16",
                  kv_dtype="float8_e4m3fn", skipped=0),
             dict(num_tokens=24, num_kv_heads=8, head_dim=128, block_size=16, dtype="bfloat16",
                  kv_dtype="float8_e4m3fn", skipped=3)),
    ]
    M, Q = MIXTRAL, QWEN3_MOE
    w13 = dict(n=2 * M["intermediate"], k=M["hidden"])
    w2 = dict(n=M["hidden"], k=M["intermediate"])
    # counted shapes: N a multiple of every tile width a kernel may pick (A is re-read once per N tile, so the
    # counted/min ratio only depends on N through ceil(N / BLOCK_N) rounding), K a few scale groups
    sm13, sm2 = dict(n=256, k=256), dict(n=256, k=384)
    for kind, op, extra in (("int4", "grouped_gemm_int4", dict(group_size=128)),
                            ("fp8", "grouped_gemm_fp8", dict(group_size=128, granularity="block")),
                            ("bf16", "grouped_gemm", {})):
        gs = extra.get("group_size")
        ex = {k: v for k, v in extra.items() if k != "group_size"}
        cases.append(Case(op, f"mixtral/{kind}-w13/decode-t16",
                          _gemm(16, M["experts"], 2, **w13, group_size=gs, **ex),
                          _gemm(16, M["experts"], 2, **sm13, group_size=gs, **ex), kind != "bf16", "gemm_traffic"))
        if kind == "bf16":
            continue
        cases.append(Case(op, f"mixtral/{kind}-w2/decode-t16", _gemm(16, M["experts"], 2, **w2, group_size=gs, **ex),
                          _gemm(16, M["experts"], 2, **sm2, group_size=gs, **ex), False, "gemm_traffic"))
        cases.append(Case(op, f"mixtral/{kind}-w13/prefill-t2k", _gemm(2048, M["experts"], 2, **w13, group_size=gs, **ex),
                          _gemm(96, M["experts"], 2, **sm13, group_size=gs, **ex)))
        cases.append(Case(op, f"qwen3-30b-a3b/{kind}-w13/decode-t64",
                          _gemm(64, Q["experts"], 8, n=2 * Q["intermediate"], k=Q["hidden"], group_size=gs, **ex),
                          _gemm(8, 16, 8, **sm13, group_size=gs, **ex), False, "gemm_traffic"))
    for fmt, t, quick in (("bf16", 16, False), ("int4", 16, True), ("fp8", 16, False), ("int4", 1024, False)):
        cases.append(Case("fused_moe", f"mixtral/moe-{fmt}/t{t}", _moe(t, **M, weight_format=fmt),
                          _moe(min(t, 6) if t <= 16 else MOE_PREFILL_COUNT_TOKENS, experts=8, hidden=256,
                               intermediate=128, top_k=2, weight_format=fmt), quick))
    cases.append(Case("fused_moe", "qwen3-30b-a3b/moe-fp8/t64", _moe(64, **Q, weight_format="fp8"),
                      _moe(4, experts=16, hidden=256, intermediate=128, top_k=8, weight_format="fp8")))
    return cases


def _moe(tokens, *, experts, hidden, intermediate, top_k, weight_format, dtype="bfloat16", seed=0) -> dict:
    counts = expert_counts(tokens, experts, top_k, seed)
    return dict(tokens=tokens, hidden=hidden, intermediate=intermediate, experts=experts, top_k=top_k,
                weight_format=weight_format, dtype=dtype, group_size=128 if weight_format == "int4" else None,
                expert_counts=counts, active_experts=sum(1 for c in counts if c))


# ---------------------------------------------------------------------------------------------- costs

def case_cost(op: str, s: dict) -> C.Cost:
    if op in ("paged_decode", "paged_prefill"):
        heads = dict(num_q_heads=s["num_q_heads"], num_kv_heads=s["num_kv_heads"], head_dim=s["head_dim"],
                     block_size=s["block_size"], dtype=s["dtype"], kv_dtype=s["kv_dtype"])
        if op == "paged_decode":
            return C.paged_decode(s["seq_len"], **heads)
        return C.paged_prefill(s["q_len"], s["seq_len"], **heads)
    if op == "merge_states":
        return C.merge_states(s["num_states"], s["num_tokens"], s["num_heads"], s["head_dim"], dtype=s["dtype"],
                              empty_rows=merge_empty_rows(s["num_tokens"], s["num_heads"]))
    if op == "write_kv":
        return C.write_kv(s["num_tokens"], num_kv_heads=s["num_kv_heads"], head_dim=s["head_dim"], dtype=s["dtype"],
                          kv_dtype=s["kv_dtype"], valid_tokens=s["num_tokens"] - s["skipped"])
    if op == "grouped_gemm":
        return C.grouped_gemm(s["group_sizes"], s["n"], s["k"], dtype=s["dtype"])
    if op == "grouped_gemm_int4":
        return C.grouped_gemm_int4(s["group_sizes"], s["n"], s["k"], group_size=s["group_size"], dtype=s["dtype"])
    if op == "grouped_gemm_fp8":
        return C.grouped_gemm_fp8(s["group_sizes"], s["n"], s["k"], act_group_size=s["group_size"],
                                  granularity=s.get("granularity", "block"), out_dtype=s["dtype"])
    if op == "fused_moe":
        return C.fused_moe(s["tokens"], s["hidden"], s["intermediate"], s["expert_counts"], s["top_k"],
                           weight_format=s["weight_format"], dtype=s["dtype"], group_size=s["group_size"] or 128)
    raise ValueError(f"op: no cost model for {op!r}")


# the report's merge_states inputs (``roofline.ops``): partial 0 is empty (LSE -inf, out NaN) at every
# MERGE_EMPTY_STEP[0]-th token and MERGE_EMPTY_STEP[1]-th head; the minimum need not read those rows' out
MERGE_EMPTY_STEP = (3, 2)


def merge_empty_rows(num_tokens: int, num_heads: int) -> int:
    return -(-num_tokens // MERGE_EMPTY_STEP[0]) * -(-num_heads // MERGE_EMPTY_STEP[1])


def fa2_bytes(s: dict) -> float:
    return C.prefill_fa2_bytes(s["q_len"], s["seq_len"], num_q_heads=s["num_q_heads"], head_dim=s["head_dim"],
                               dtype=s["dtype"], kv_dtype=s["kv_dtype"])


def json_shape(op: str, s: dict) -> dict:
    """The row's ``shape``: attention ``num_seqs, q_len, seq_len, heads, head_dim, block_size, kv_dtype``;
    GEMM ``tokens, n, k, experts, group_size`` (lists of ragged lengths are summarised as their max and sum)."""
    def summary(v):
        return v if isinstance(v, int) else {"max": max(v), "sum": sum(v), "count": len(v)}

    if op in ("paged_decode", "paged_prefill"):
        return dict(num_seqs=s["num_seqs"], q_len=summary(s["q_len"]), seq_len=summary(s["seq_len"]),
                    num_q_heads=s["num_q_heads"], num_kv_heads=s["num_kv_heads"], head_dim=s["head_dim"],
                    block_size=s["block_size"], kv_dtype=s["kv_dtype"])
    if op in ("grouped_gemm", "grouped_gemm_int4", "grouped_gemm_fp8"):
        return dict(tokens=s["tokens"], n=s["n"], k=s["k"], experts=s["experts"], group_size=s["group_size"],
                    active_experts=s["active_experts"], top_k=s["top_k"])
    if op == "fused_moe":
        return dict(tokens=s["tokens"], n=2 * s["intermediate"], k=s["hidden"], experts=s["experts"],
                    group_size=s["group_size"], hidden=s["hidden"], intermediate=s["intermediate"],
                    top_k=s["top_k"], weight_format=s["weight_format"], active_experts=s["active_experts"])
    return {k: v for k, v in s.items()}
