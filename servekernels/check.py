"""``servekernels check``: every op of the registry against its float64 reference, on each implementation.

The cases are the op specs' ``check`` shapes (``kernels/ops/<op>.py``): realistic head layouts and expert
counts at interpreter-sized lengths, every feature a case names active (a loud newest key, a window shorter
than the context, logits far past the soft-cap). Inputs, call and tolerances are the registry's, so a case
here is judged exactly as the parity suite judges (``kernels.testing.judge``). ``--impl NAME`` (repeatable;
default ``servekernels``) runs them on each implementation (``kernels.impls``): one row per (case, impl,
output). A case an implementation declines is "unsupported: <reason>"; an op it lacks is "not provided";
both are listed, neither passes nor fails. Exit 1 on any failure.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass
class Result:
    """One comparison, reported at its worst element (largest error / tolerance): that element's error and
    tolerance (tolerances may be per element), plus the overall error relative to the output's magnitude.
    ``op`` is the output's label (``out``, ``lse``, ``y``...); ``status`` "unsupported: ..." or "not
    provided" for a row that neither passes nor fails."""

    case: str
    op: str
    dtype: str
    max_abs_err: float
    atol: float
    max_rel_err: float
    seconds: float
    detail: str = ""
    impl: str = "servekernels"
    status: str = ""

    @property
    def ok(self) -> bool:
        return not self.detail


@dataclass
class Case:
    """A named check; ``run()`` returns one or more Results (e.g. out and lse)."""

    name: str
    run: Callable[[], Iterable[Result]]
    impl: str = "servekernels"


def compare(case: str, op: str, dtype: str, actual, expected, atol, started: float) -> Result:
    """``atol`` is a scalar or per element; pass/fail as ``kernels.testing.judge.compare`` (NaN patterns included)."""
    from kernels.testing.judge import compare as judge_one

    v = judge_one(case, op, actual, expected, atol)
    return Result(case, op, dtype, v.max_abs_err, v.atol, v.max_rel_err, time.perf_counter() - started, v.detail)


def _label(inputs) -> str:
    """The case's dtype column: the activation dtype, plus the cache or weight format where it is not that."""
    import torch

    first = inputs.args[0]
    label = str(first.dtype).replace("torch.", "") if isinstance(first, torch.Tensor) else ""
    fmt = inputs.shape.get("kv_dtype") if "kv_dtype" in inputs.shape else inputs.shape.get("weight_format")
    if fmt and fmt not in (label, "dense", "bf16"):
        label += f"/{fmt}"
    return label


def spec_case(spec, case_name: str, shape: dict, provider) -> Case:
    """One check case of one op on one provider: build (on ``default_device()``), call, judge."""

    def run():
        from kernels.impls import NotProvidedError, Unsupported
        from kernels.testing.judge import judge
        from kernels.runtime import default_device

        started = time.perf_counter()
        try:
            fn = provider.op(spec.name)
        except NotProvidedError:
            return [Result(case_name, spec.name, "", *(float("nan"),) * 3, 0.0, impl=provider.name,
                           status="not provided")]
        inputs = spec.build(shape, default_device(), seed=len(case_name))
        try:
            actual = spec.call(fn, inputs)
        except Unsupported as exc:
            return [Result(case_name, spec.name, _label(inputs), *(float("nan"),) * 3,
                           time.perf_counter() - started, impl=provider.name, status=f"unsupported: {exc}")]
        results = [Result(case_name, v.output, _label(inputs), v.max_abs_err, v.atol, v.max_rel_err,
                          time.perf_counter() - started, v.detail, impl=provider.name, status=v.status)
                   for v in judge(spec, fn, inputs, actual=actual)]
        return pin_deviations(results, provider, case_name)

    return Case(case_name, run, provider.name)


def pin_deviations(results: list[Result], provider, case_name: str) -> list[Result]:
    """A case the provider declares a known deviation (``Provider.deviation_for``) is a strict expected
    failure: its failing rows read "known deviation: <reason>" (neither pass nor fail); if every row passes,
    the case FAILs as an unexpected pass (the deviation was fixed: drop it from the provider)."""
    reason = provider.deviation_for(case_name)
    if reason is None:
        return results
    if all(r.ok for r in results):
        return [Result(case_name, "xpass", "", *(float("nan"),) * 3, results[0].seconds if results else 0.0,
                       f"{case_name}: {provider.name} was expected to deviate ({reason}) and passed: the deviation "
                       "is fixed, remove it from the provider", impl=provider.name)]
    for r in results:
        if not r.ok:
            r.detail, r.status = "", f"known deviation: {reason}"
    return results


def collect(selected: list[str] | None = None, exact: bool = False, impls: list[str] | None = None) -> list[Case]:
    """Every op's check cases (``-k`` selection by case name) on each of ``impls`` (default servekernels)."""
    from kernels.impls import load
    from kernels.ops import registry
    from servekernels.usage import select_names

    named = [(spec, name, shape) for spec in registry().values() for name, shape in spec.check.items()]
    names = set(select_names([n for _, n, _ in named], selected, exact=exact, hint=" (servekernels check --list)"))
    providers = [load(i) for i in (impls or ["servekernels"])]
    return [spec_case(spec, name, shape, p) for p in providers for spec, name, shape in named if name in names]


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
                       detail=f"{case.name} crashed: {reason}", impl=case.impl)]


def add_arguments(p) -> None:
    p.add_argument("-k", dest="select", action="append", metavar="NAME",
                   help="only cases whose name contains NAME (a substring; repeatable: any of them)")
    p.add_argument("--exact", action="store_true", help="-k NAME selects only the case named exactly NAME")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="print where failing outputs differ")
    p.add_argument("--invariance", action="store_true",
                   help="instead: which batch-invariance properties hold (servekernels/check_invariance.py)")
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="the implementation to judge: servekernels (default), reference, torch, vllm, an entry point "
                   "of servekernels.impls or a module path pkg.mod[:obj] (repeatable: one row per case and impl)")
    p.add_argument("--needle", type=int, default=0, metavar="N",
                   help="with --invariance: also the engine needle test among N other requests")


def format_row(cells, width: int, impl_width: int = 12) -> str:
    """One table line: case (``width`` wide), impl, worst err, its tol, rel err, s, pass, then output and
    dtype, whose lengths vary, last, so the other columns stay aligned whatever the names."""
    case, impl, err, tol, rel, sec, ok, op, dtype = cells
    return f"{case:<{width}} {impl:<{impl_width}} {err:>12} {tol:>11} {rel:>9} {sec:>6}  {ok:<4}  {op:<10} {dtype}"


def run(args) -> int:
    from kernels.runtime import machine_label

    if args.invariance:
        from servekernels import check_invariance

        return check_invariance.run(args)
    try:
        cases = collect(args.select, args.exact, args.impl)
    except ValueError as exc:  # an --impl that does not load: a usage error
        from servekernels.usage import UsageError

        raise UsageError(str(exc)) from exc
    if args.list:
        for c in cases:
            print(c.name if not args.impl else f"{c.name}  [{c.impl}]")
        return 0
    print(f"servekernels check on {machine_label()}: {len(cases)} cases")
    width = max([34] + [len(c.name) for c in cases])
    iw = max([12] + [len(c.impl) for c in cases])
    header = format_row(("case", "impl", "worst err", "its tol", "rel err", "s", "pass", "output", "dtype"), width, iw)
    print(header)
    print("-" * len(header))
    failures, skipped = [], []
    for case in cases:
        for r in run_case(case):
            if r.status:
                print(format_row((r.case, r.impl, "", "", "", f"{r.seconds:.1f}", "-", r.op, r.status), width, iw),
                      flush=True)
                skipped.append(r)
            elif r.op == "crashed":
                print(format_row((r.case, r.impl, "", "", "", f"{r.seconds:.1f}", "FAIL", r.op, r.dtype), width, iw),
                      flush=True)
            else:
                print(format_row((r.case, r.impl, f"{r.max_abs_err:.3e}", f"{r.atol:.3e}", f"{r.max_rel_err:.2e}",
                                  f"{r.seconds:.1f}", "PASS" if r.ok else "FAIL", r.op, r.dtype), width, iw),
                      flush=True)
            if not r.ok:
                failures.append(r)
    for r in failures:
        if args.verbose and r.detail:
            print(r.detail)
    tail = f" ({len(skipped)} rows unsupported or not provided)" if skipped else ""
    print((f"{len(failures)} failed" if failures else "all passed") + tail)
    return 1 if failures else 0
