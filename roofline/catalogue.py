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
    tracked: bool = False  # asv tracks its counted traffic (with every quick case); its op spec says so


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


# fused_moe's small (parity) shape at a prefill-sized T uses this many tokens: 160 rows over 8 experts, past the
# grouped GEMMs' decode regime (<= 16 rows per expert, kernels/triton/gemm_configs.py), so its expert GEMMs run the
# prefill tiles the full-size T = 1024 call uses (a test checks the regimes agree); its traffic is counted at full size
MOE_PREFILL_COUNT_TOKENS = 80


def catalogue() -> list[Case]:
    """Every op spec's cases (``kernels/ops/<op>.py``: ``SPEC.cases``), in the registry's order."""
    from kernels.ops import registry

    return [c for spec in registry().values() for c in spec.cases()]


def _moe(tokens, *, experts, hidden, intermediate, top_k, weight_format, dtype="bfloat16", seed=0) -> dict:
    counts = expert_counts(tokens, experts, top_k, seed)
    return dict(tokens=tokens, hidden=hidden, intermediate=intermediate, experts=experts, top_k=top_k,
                weight_format=weight_format, dtype=dtype, group_size=128 if weight_format == "int4" else None,
                expert_counts=counts, active_experts=sum(1 for c in counts if c))


# ---------------------------------------------------------------------------------------------- costs

def case_cost(op: str, s: dict) -> C.Cost:
    """The op spec's cost model at shape ``s``."""
    from kernels.ops import get

    return get(op).cost(s)


def merge_empty_rows(num_tokens: int, num_heads: int) -> int:
    from kernels.ops.merge_states import MERGE_EMPTY_STEP

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
