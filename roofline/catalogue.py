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


def json_shape(op: str, s: dict) -> dict:
    """The row's ``shape``: the op spec's ``row_shape`` summary of ``s``."""
    return get(op).row_shape(s)
