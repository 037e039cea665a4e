"""The report's catalogue: every op spec's ``Case``s (real model shapes, ``kernels.ops.models``), their costs and
the row summaries the report prints.

Each ``Case`` has a full shape (what the roofline models and a GPU measures) and a ``small`` shape with the same
head counts, head size, GQA ratio, block size, dtypes, expert count and routing skew but shorter contexts,
fewer tokens and narrower GEMMs: the interpreter runs that one for counted traffic and parity. Counted bytes
are reported at full size as ``(counted / minimum at the small shape) * minimum at full size``; that ratio is
what a kernel's schedule fixes (re-reads per head, per tile, per split), and it does not grow with size for the
schedules here (it can only shrink as fixed per-sequence overheads amortise, so the extrapolation is
conservative).
"""
from __future__ import annotations

from kernels.ops import Case, get, registry
from roofline import cost as C
from servekernels.usage import select_names


def catalogue() -> list[Case]:
    """Every op spec's cases (``kernels/ops/<op>.py``: ``SPEC.cases``), in the registry's order."""
    return [c for spec in registry().values() for c in spec.cases()]


def case_cost(op: str, s: dict) -> C.Cost:
    """The op spec's cost model at shape ``s``."""
    return get(op).cost(s)


def select(cases: list[Case], quick: bool, names, exact: bool = False) -> list[Case]:
    """``--quick`` cases (or all), then those ``-k`` names select (substrings, or exact names)."""
    if quick:
        cases = [c for c in cases if c.quick]
    chosen = set(select_names([c.name for c in cases], names, exact=exact,
                              hint=" (in the --quick catalogue)" if quick else ""))
    return [c for c in cases if c.name in chosen]


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
