"""``servekernels check``: every implemented kernel against its float64 reference on realistic cases.

Case catalogues live next to the parity suite (``correctness/check_*.py``, each exposing ``cases()``) so
inputs and tolerances are written once. Prints a table (case, op, dtype, the error and tolerance at the worst
element, the error relative to the output's magnitude, pass) and exits non-zero on any failure.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable

CATALOGUES = ("correctness.check_attention", "correctness.check_moe")


@dataclass
class Result:
    """One comparison, reported at its worst element (largest error / tolerance): that element's error and
    tolerance (tolerances may be per element), plus the overall error relative to the output's magnitude."""

    case: str
    op: str
    dtype: str
    max_abs_err: float
    atol: float
    max_rel_err: float
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.detail


@dataclass
class Case:
    """A named check; ``run()`` returns one or more Results (e.g. out and lse)."""

    name: str
    run: Callable[[], Iterable[Result]]


def compare(case: str, op: str, dtype: str, actual, expected, atol, started: float) -> Result:
    """``atol`` is a scalar or per element; pass/fail is ``describe_mismatch`` (NaN patterns included)."""
    import numpy as np

    from correctness.assertions import describe_mismatch, max_rel_err
    from kernels.reference._arrays import f64

    detail = describe_mismatch(actual, expected, atol=atol, name=f"{case}/{op}") or ""
    a, e = f64(actual), f64(expected)
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), e.shape)
    finite = np.isfinite(a) & np.isfinite(e)
    err = np.where(finite, np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0)), 0.0)
    err = np.where(np.isnan(a) != np.isnan(e), np.inf, err)
    if err.size:
        worst = np.unravel_index(int(np.argmax(err / np.maximum(tol, 1e-300))), err.shape)
        worst_err, worst_tol = float(err[worst]), float(tol[worst])
    else:
        worst_err, worst_tol = 0.0, float(np.max(tol, initial=0.0))
    return Result(case, op, dtype, worst_err, worst_tol, max_rel_err(actual, expected),
                  time.perf_counter() - started, detail)


def collect(selected: list[str] | None = None, exact: bool = False) -> list[Case]:
    from servekernels.usage import select_names

    cases = [c for module in CATALOGUES for c in importlib.import_module(module).cases()]
    names = set(select_names([c.name for c in cases], selected, exact=exact, hint=" (servekernels check --list)"))
    return [c for c in cases if c.name in names]


def run_case(case: Case) -> list[Result]:
    """``case.run()``'s results, or one failing Result with the exception's one-line reason: a case that crashes
    is a FAIL row and the cases after it still run."""
    started = time.perf_counter()
    try:
        return list(case.run())
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]
        nan = float("nan")
        return [Result(case.name, "crashed", reason, nan, nan, nan, time.perf_counter() - started,
                       detail=f"{case.name} crashed: {reason}")]


def add_arguments(p) -> None:
    p.add_argument("-k", dest="select", action="append", metavar="NAME",
                   help="only cases whose name contains NAME (a substring; repeatable: any of them)")
    p.add_argument("--exact", action="store_true", help="-k NAME selects only the case named exactly NAME")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="print where failing outputs differ")
    p.add_argument("--invariance", action="store_true",
                   help="instead: which batch-invariance properties hold (servekernels/check_invariance.py)")
    p.add_argument("--impl", action="append", help="with --invariance: servekernels (default), reference, torch, "
                   "vllm or a dotted import path (repeatable)")
    p.add_argument("--needle", type=int, default=0, metavar="N",
                   help="with --invariance: also the engine needle test among N other requests")


def format_row(cells, width: int) -> str:
    """One table line: case (``width`` wide), worst err, its tol, rel err, s, pass, then op and dtype, whose
    lengths vary, last, so the other columns stay aligned whatever the case, op or dtype names."""
    case, err, tol, rel, sec, ok, op, dtype = cells
    return f"{case:<{width}} {err:>12} {tol:>11} {rel:>9} {sec:>6}  {ok:<4}  {op:<10} {dtype}"


def run(args) -> int:
    from kernels.runtime import machine_label

    if args.invariance:
        from servekernels import check_invariance

        return check_invariance.run(args)
    cases = collect(args.select, args.exact)
    if args.list:
        for c in cases:
            print(c.name)
        return 0
    print(f"servekernels check on {machine_label()}: {len(cases)} cases")
    width = max([34] + [len(c.name) for c in cases])
    header = format_row(("case", "worst err", "its tol", "rel err", "s", "pass", "op", "dtype"), width)
    print(header)
    print("-" * len(header))
    failures = []
    for case in cases:
        for r in run_case(case):
            if r.op == "crashed":
                print(format_row((r.case, "", "", "", f"{r.seconds:.1f}", "FAIL", r.op, r.dtype), width), flush=True)
            else:
                print(format_row((r.case, f"{r.max_abs_err:.3e}", f"{r.atol:.3e}", f"{r.max_rel_err:.2e}",
                                  f"{r.seconds:.1f}", "PASS" if r.ok else "FAIL", r.op, r.dtype), width), flush=True)
            if not r.ok:
                failures.append(r)
    for r in failures:
        if args.verbose and r.detail:
            print(r.detail)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0
