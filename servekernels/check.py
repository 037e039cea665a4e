"""``servekernels check``: every op of the registry against its float64 reference, on each implementation.

The cases are the op specs' ``check`` shapes (``kernels/ops/<op>.py``): realistic head layouts and expert
counts at interpreter-sized lengths, every feature a case names active (a loud newest key, a window shorter
than the context, logits far past the soft-cap). Inputs, call and tolerances are the registry's, so a case
here is judged exactly as the parity suite judges (``kernels.testing.judge``). ``--impl NAME`` (repeatable;
default ``servekernels``) runs them on each implementation (``kernels.impls``): one row per (case, impl,
output). A case an implementation declines is "unsupported: <reason>"; an op it lacks is "not provided";
both are listed, neither passes nor fails. Exit 1 on any failure.

Integrity (``kernels/testing/integrity.py``): the judge's objects are snapshotted before any implementation is
imported and checked after each import and each case; every call is guarded (inputs digested before and after,
introspection refused) and its outputs vetted (plain tensors of the contract's dtype, the reference's shape,
owning their storage); the reference runs after the call, on the verified inputs. Besides the check shapes,
each op selected runs one shape drawn from the run seed (``OpSpec.draw``, "<op>/drawn") and then the same call
again on fresh values in the same storage ("<op>/drawn, fresh values"): a cache or a first-call-right
implementation answers stale there. Every input derives from one run seed (``--seed``; default fixed for the
built-in providers, fresh for a user's implementation), printed with a replay line for any failure.
``--isolate`` runs each implementation in a subprocess of its own (``kernels.testing.isolated``).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from kernels import runtime  # its functions are looked up at each call (tests patch them)
from kernels.impls import NotProvidedError, Unsupported, load
from kernels.ops import registry
from kernels.testing.integrity import (Breach, JudgeSnapshot, case_seed, fresh_values, guard, run_seed,
                                       vet_outputs)
from kernels.testing.isolated import isolated
from kernels.testing.judge import compare as judge_one
from kernels.testing.judge import expected_outputs, judge
from servekernels import check_invariance
from servekernels.usage import UsageError, select_names


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
    defence: str = ""  # on a failure: the integrity rule that caught it (``integrity.DEFENCES``), "values" if none
    diagnosis: str = ""  # on a failure: the worst element in the input's terms, the structure of the errors
    summary: str = ""  # a row without numbers (an extra check): what it found, printed in their place

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
    v = judge_one(case, op, actual, expected, atol)
    return Result(case, op, dtype, v.max_abs_err, v.atol, v.max_rel_err, time.perf_counter() - started, v.detail)


def _label(inputs) -> str:
    """The case's dtype column: the activation dtype (the first float argument's: RoPE's first is its positions),
    plus the cache or weight format where it is not that."""
    import torch  # deferred: `servekernels check --help` imports this module and must not import torch

    first = next((a for a in inputs.args if isinstance(a, torch.Tensor) and a.is_floating_point()), inputs.args[0])
    label = str(first.dtype).replace("torch.", "") if isinstance(first, torch.Tensor) else ""
    fmt = inputs.shape.get("kv_dtype") if "kv_dtype" in inputs.shape else inputs.shape.get("weight_format")
    if fmt and fmt not in (label, "dense", "bf16"):
        label += f"/{fmt}"
    return label


def spec_case(spec, case_name: str, shape: dict, provider, seed: int = 0, fresh: bool = False) -> Case:
    """One check case of one op on one provider: build (on ``runtime.default_device()``, from the case's seed), call
    (guarded), judge. ``fresh``: then refill the same inputs with fresh values and call and judge again
    (``integrity.fresh_values``), the first call's outputs kept alive."""

    def run():
        started = time.perf_counter()
        try:
            fn = provider.op(spec.name)
        except NotProvidedError:
            return [Result(case_name, spec.name, "", *(float("nan"),) * 3, 0.0, impl=provider.name,
                           status="not provided")]
        inputs = spec.build(shape, runtime.default_device(), seed=case_seed(seed, case_name))
        first, kept = judge_call(spec, fn, inputs, case_name, provider, started,
                                 "drawn shape" if fresh else "values")
        if not fresh or any(r.status for r in first) or not all(r.ok for r in first):
            return pin_deviations(first, provider, case_name)
        what = fresh_values(inputs)
        again, _ = judge_call(spec, fn, inputs, f"{case_name}, fresh values", provider, time.perf_counter(),
                              "fresh values", earlier=kept)
        for r in again:
            if not r.ok and r.defence == "fresh values":
                r.detail = f"{r.detail} (the same call again with {what})"
        return pin_deviations(first, provider, case_name) + pin_deviations(again, provider, case_name)

    return Case(case_name, run, provider.name)


def judge_call(spec, fn, inputs, case_name: str, provider, started: float, defence: str = "values",
               earlier: list | None = None) -> tuple[list[Result], list]:
    """One guarded call of ``fn`` on ``inputs``, its outputs vetted, then the reference (after the call) and the
    comparison: ``(results, the call's outputs)``. A broken integrity rule is one FAIL row naming it; a value
    failure names ``defence`` (what made this call's inputs: the check shape, a drawn shape, fresh values)."""
    label = _label(inputs)
    nan = float("nan")
    try:
        actual = spec.call(guard(fn, spec), inputs)
        expected = expected_outputs(spec, inputs)  # after the call: nothing of it exists while the call runs
        if getattr(fn, "__wrapped__", fn) is not spec.reference_fn():  # the oracle itself returns float64 numpy
            vet_outputs(spec, inputs, actual, expected, earlier)
    except Unsupported as exc:
        return [Result(case_name, spec.name, label, nan, nan, nan, time.perf_counter() - started,
                       impl=provider.name, status=f"unsupported: {exc}")], []
    except Breach as exc:
        return [Result(case_name, "integrity", label, nan, nan, nan, time.perf_counter() - started,
                       f"{case_name}: {exc}", impl=provider.name, defence=exc.defence)], []
    results = [Result(case_name, v.output, label, v.max_abs_err, v.atol, v.max_rel_err,
                      time.perf_counter() - started, v.detail, impl=provider.name, status=v.status,
                      defence="" if v.ok else defence, diagnosis=v.diagnosis, summary=v.summary)
               for v in judge(spec, fn, inputs, expected=expected, actual=actual)]
    return results, [t for t in actual.values() if hasattr(t, "data_ptr")]


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


def drawn_cases(specs, seed: int) -> list[tuple]:
    """``[(spec, name, shape)]``: one shape per op drawn from the run seed (``OpSpec.draw``), named
    "<op>/drawn"."""
    return [(spec, f"{spec.name}/drawn", spec.draw(random.Random(f"{seed}/{spec.name}")))
            for spec in specs if spec.draw is not None]


def collect(selected: list[str] | None = None, exact: bool = False, impls: list[str] | None = None,
            seed: int = 0, snapshot=None, isolate: bool = False, drawn: bool = True) -> list[Case]:
    """Every op's check cases (``-k`` selection by case name) on each of ``impls`` (default servekernels), then
    a drawn case for each op selected (``drawn``). ``snapshot`` (an ``integrity.JudgeSnapshot`` taken before any
    implementation was imported): an implementation whose import replaced part of the judge gets one failing
    case instead of its cases (the judge is put back). ``isolate``: each implementation runs in a subprocess."""
    named = [(spec, name, shape) for spec in registry().values() for name, shape in spec.check.items()]
    names = set(select_names([n for _, n, _ in named], selected, exact=exact, hint=" (servekernels check --list)"))
    chosen = [(spec, name, shape) for spec, name, shape in named if name in names]
    extra = drawn_cases(list({id(s): s for s, _, _ in chosen}.values()), seed) if drawn else []
    cases = []
    for impl in impls or ["servekernels"]:
        if isolate:
            provider = isolated(impl)
        else:
            provider = load(impl)
        try:
            if snapshot is not None:
                snapshot.check(f"importing {impl}")
        except Breach as exc:
            cases.append(_breached(impl, exc))
            continue
        cases += [spec_case(spec, name, shape, provider, seed) for spec, name, shape in chosen]
        cases += [spec_case(spec, name, shape, provider, seed, fresh=True) for spec, name, shape in extra]
    return cases


def _breached(impl: str, exc) -> Case:
    nan = float("nan")
    return Case("(import)", lambda: [Result("(import)", "integrity", "", nan, nan, nan, 0.0, f"{impl}: {exc}",
                                            impl=impl, defence=exc.defence)], impl)


def run_case(case: Case, snapshot=None) -> list[Result]:
    """``case.run()``'s results, or one failing Result with the exception's one-line reason: a case that crashes
    is a FAIL row and the cases after it still run. ``snapshot``: the judge is checked after the case (a part of
    it replaced during the case fails the case, and is put back)."""
    started = time.perf_counter()
    try:
        results = list(case.run())
        if snapshot is not None:
            snapshot.check(f"{case.impl} (during {case.name})")
        return results
    except Breach as exc:
        nan = float("nan")
        return [Result(case.name, "integrity", "", nan, nan, nan, time.perf_counter() - started,
                       f"{case.name}: {exc}", impl=case.impl, defence=exc.defence)]
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
    p.add_argument("--json", action="store_true",
                   help="print every row (case, impl, output, worst error, tolerance, margin, verdict, diagnosis, "
                   "seed) as one JSON document on stdout instead of the table")
    p.add_argument("--invariance", action="store_true",
                   help="instead: which batch-invariance properties hold (servekernels/check_invariance.py)")
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="the implementation to judge: servekernels (default), reference, torch, vllm, an entry point "
                   "of servekernels.impls or a module path pkg.mod[:obj] (repeatable: one row per case and impl)")
    p.add_argument("--needle", type=int, default=0, metavar="N",
                   help="with --invariance: also the engine needle test among N other requests")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="the run seed every input derives from (default: fixed for the built-in providers, fresh "
                   "for a user's implementation; printed, so a run replays with --seed N)")
    p.add_argument("--isolate", action="store_true",
                   help="run each implementation in a subprocess of its own: it cannot reach or patch the judge")


def format_row(cells, width: int, impl_width: int = 12) -> str:
    """One table line: case (``width`` wide), impl, worst err, its tol, rel err, s, pass, then output and
    dtype, whose lengths vary, last, so the other columns stay aligned whatever the names."""
    case, impl, err, tol, rel, sec, ok, op, dtype = cells
    return f"{case:<{width}} {impl:<{impl_width}} {err:>12} {tol:>11} {rel:>9} {sec:>6}  {ok:<4}  {op:<10} {dtype}"


def run(args) -> int:
    if args.invariance:
        return check_invariance.run(args)
    snapshot = JudgeSnapshot()  # before any implementation is imported
    impls = list(args.impl or ["servekernels"])
    seed = run_seed(getattr(args, "seed", None), impls)
    try:
        cases = collect(args.select, args.exact, impls, seed, snapshot, getattr(args, "isolate", False),
                        drawn=not args.list)
    except ValueError as exc:  # an --impl that does not load: a usage error
        raise UsageError(str(exc)) from exc
    if args.list:
        for c in cases:
            print(c.name if not args.impl else f"{c.name}  [{c.impl}]")
        return 0
    if getattr(args, "json", False):
        return _run_json(cases, snapshot, seed, runtime.machine_label())
    print(f"servekernels check on {runtime.machine_label()}: {len(cases)} cases, seed {seed}")
    width = max([34] + [len(c.name) for c in cases])
    iw = max([12] + [len(c.impl) for c in cases])
    header = format_row(("case", "impl", "worst err", "its tol", "rel err", "s", "pass", "output", "dtype"), width, iw)
    print(header)
    print("-" * len(header))
    failures, skipped = [], []
    for case in cases:
        for r in run_case(case, snapshot):
            if r.status:
                print(format_row((r.case, r.impl, "", "", "", f"{r.seconds:.1f}", "-", r.op, r.status), width, iw),
                      flush=True)
                skipped.append(r)
            elif r.summary and r.ok:
                print(format_row((r.case, r.impl, "", "", "", f"{r.seconds:.1f}", "PASS", r.op, r.summary), width, iw),
                      flush=True)
            elif r.op == "crashed":
                print(format_row((r.case, r.impl, "", "", "", f"{r.seconds:.1f}", "FAIL", r.op, r.dtype), width, iw),
                      flush=True)
            else:
                print(format_row((r.case, r.impl, f"{r.max_abs_err:.3e}", f"{r.atol:.3e}", f"{r.max_rel_err:.2e}",
                                  f"{r.seconds:.1f}", "PASS" if r.ok else "FAIL", r.op, r.dtype), width, iw),
                      flush=True)
                if r.diagnosis:
                    print(f"    diagnosis: {r.diagnosis}", flush=True)
            if not r.ok:
                failures.append(r)
    for r in failures:
        if (args.verbose or r.defence not in ("", "values")) and r.detail:
            print(f"[{r.defence or 'values'}] {r.detail}" + (f"\n  diagnosis: {r.diagnosis}" if r.diagnosis else ""))
    tail = f" ({len(skipped)} rows unsupported or not provided)" if skipped else ""
    print((f"{len(failures)} failed" if failures else "all passed") + tail)
    if failures:
        print(f"replay: {_replay(failures, seed)}")
    return 1 if failures else 0


def _replay(failures: list[Result], seed: int) -> str:
    cases_failed = list(dict.fromkeys(r.case.split(", fresh")[0] for r in failures))
    impl_args = " ".join(f"--impl {i}" for i in dict.fromkeys(r.impl for r in failures))
    return (f"servekernels check --seed {seed} {impl_args} " + " ".join(
        f"-k {c}" for c in cases_failed if not c.endswith("/drawn") and c != "(import)")
        + (" (drawn cases: the op's -k selects them)" if any(c.endswith("/drawn") for c in cases_failed) else ""))


def _number(x: float) -> float | None:
    """A JSON number, or null for NaN (no error measured) and infinity (a NaN or infinity pattern differs)."""
    return x if x == x and abs(x) != float("inf") else None


def json_row(r: Result, seed: int) -> dict:
    """One row for ``--json``: ``verdict`` pass, fail or skip (``status`` says why: unsupported, not provided, a
    known deviation); ``worst_err`` and ``tol`` at the worst element (largest error / tolerance; null when not
    finite), ``margin`` their ratio (above 1 fails); ``diagnosis`` names a failure in the input's terms."""
    verdict = "skip" if r.status else ("pass" if r.ok else "fail")
    margin = r.max_abs_err / r.atol if r.atol and r.atol == r.atol and r.max_abs_err == r.max_abs_err else float("nan")
    return {"case": r.case, "impl": r.impl, "output": r.op, "dtype": r.dtype, "verdict": verdict,
            "worst_err": _number(r.max_abs_err), "tol": _number(r.atol), "margin": _number(margin),
            "rel_err": _number(r.max_rel_err), "status": r.status, "summary": r.summary, "diagnosis": r.diagnosis,
            "defence": r.defence, "detail": r.detail, "seconds": round(r.seconds, 3), "seed": seed}


def _run_json(cases: list[Case], snapshot, seed: int, machine: str) -> int:
    """``--json``: every row as one JSON document on stdout (``json_row``), exit 1 on any failure."""
    rows = [r for case in cases for r in run_case(case, snapshot)]
    failures = [r for r in rows if not r.ok]
    print(json.dumps({"machine": machine, "seed": seed, "rows": [json_row(r, seed) for r in rows],
                      "failed": len(failures), "replay": _replay(failures, seed) if failures else None}, indent=1))
    return 1 if failures else 0
