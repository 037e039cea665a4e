"""The one oracle: ``judge(spec, fn, inputs)`` calls an implementation of an op (``kernels.ops.OpSpec``) and its
float64 reference on the same inputs and compares each output under the spec's per-element tolerance, one
``kernels.ops.Verdict`` per output; pytest, ``servekernels check`` and the report's parity column all judge
through it."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from kernels.ops import Inputs, NotProvided, OpSpec, Verdict
from kernels.reference._arrays import f64
from kernels.testing.assertions import describe_mismatch, element_errors, max_rel_err, worst_index


def compare(op: str, name: str, actual, expected, atol) -> Verdict:
    """``atol`` scalar or per element; pass/fail is ``describe_mismatch`` (NaN patterns included). A
    comparison whose expected output is all zero, or within its own tolerance everywhere, is vacuous and fails:
    a kernel returning zeros must not pass."""
    a, e = f64(actual), f64(expected)
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), e.shape)
    detail = describe_mismatch(a, e, atol=tol, name=f"{op}.{name}") or ""
    if e.size and a.shape == e.shape:
        worst = worst_index(a, e, tol)
        worst_err, worst_tol = float(element_errors(a[worst], e[worst])), float(tol[worst])
    else:
        worst_err, worst_tol = 0.0, float(np.max(tol, initial=0.0))
    scale = np.abs(np.where(np.isfinite(e), e, 0.0))
    if not detail and e.size and not (scale > tol).any():
        detail = f"{op}.{name}: vacuous comparison (|expected| <= tolerance everywhere)"
    return Verdict(op, name, not detail, worst_err, worst_tol, max_rel_err(a, e), detail)


def expected_outputs(spec: OpSpec, inputs: Inputs) -> dict:
    return spec.call(spec.reference_fn(), inputs)


def judge(spec: OpSpec, fn: Callable, inputs: Inputs, expected: dict | None = None,
          actual: dict | None = None) -> list[Verdict]:
    """``fn`` (any implementation of ``spec``) against the reference on ``inputs``, one Verdict per output."""
    actual = spec.call(fn, inputs) if actual is None else actual
    expected = expected_outputs(spec, inputs) if expected is None else expected
    tols = spec.tolerance(inputs, expected)
    verdicts = []
    for name in spec.outputs:
        if isinstance(actual[name], NotProvided):
            nan = float("nan")
            verdicts.append(Verdict(spec.name, name, True, nan, nan, nan, "", f"unsupported: {actual[name].reason}"))
        else:
            v = compare(spec.name, name, _host(actual[name]), expected[name], tols[name])
            if not v.ok and spec.diagnose is not None:
                v.diagnosis = _diagnosis(spec, inputs, name, _host(actual[name]), expected[name], tols[name])
            verdicts.append(v)
    if spec.extra_checks:
        for name, ok, detail, *summary in spec.extra_checks(inputs, actual):
            verdicts.append(Verdict(spec.name, name, ok, float("nan"), float("nan"), float("nan"),
                                    "" if ok else detail, summary="".join(summary)))
    return verdicts


def _diagnosis(spec: OpSpec, inputs: Inputs, name: str, actual, expected, tol) -> str:
    """``spec.diagnose``'s text; a diagnosis that fails to run is reported as such (the verdict stands)."""
    try:
        return spec.diagnose(inputs, name, actual, expected, tol)
    except Exception as exc:  # the diagnosis explains a failure; it must never change or hide the verdict
        return f"(no diagnosis: {type(exc).__name__}: {exc})"


def _host(x):
    return x.detach().cpu() if hasattr(x, "detach") else x


def timed_judge(spec: OpSpec, fn: Callable, inputs: Inputs) -> tuple[list[Verdict], float]:
    t0 = time.perf_counter()
    verdicts = judge(spec, fn, inputs)
    return verdicts, time.perf_counter() - t0
