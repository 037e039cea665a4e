"""One verbose closeness check for every parity test: where and how much two tensors differ, NaN included.

``assert_close`` also refuses a vacuous comparison: if an all-zero output would pass (the expected values are
all inside the tolerance), the test could not fail, and that is an error in the test.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from kernels.reference._arrays import f64


def max_abs_err(actual, expected) -> float:
    """max |a - e| over positions where both are finite; inf when a NaN/inf pattern differs."""
    a, e = f64(actual), f64(expected)
    if a.shape != e.shape:
        return float("inf")
    if (np.isnan(a) != np.isnan(e)).any() or (np.isinf(a) != np.isinf(e)).any():
        return float("inf")
    both = np.isfinite(a) & np.isfinite(e)
    if (np.isinf(a) & (a != e)).any():
        return float("inf")
    return float(np.abs(a[both] - e[both]).max(initial=0.0))


def max_rel_err(actual, expected) -> float:
    """max |a - e| scaled by the output's magnitude (max |e|), the figure tables and reports print."""
    e = f64(expected)
    finite = e[np.isfinite(e)]
    mag = float(np.abs(finite).max(initial=0.0))
    err = max_abs_err(actual, expected)
    return err / mag if mag > 0 else err


def mismatch(actual, expected, atol, rtol: float = 0.0) -> np.ndarray:
    """Where ``actual`` fails ``expected``: ``|a - e| > atol + rtol |e|`` where both are finite, a NaN pattern
    that differs, or an infinity that is not equal."""
    a, e = f64(actual), f64(expected)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    inf_diff = (np.isinf(a) | np.isinf(e)) & ~(nan_a | nan_e) & (a != e)
    finite = np.isfinite(a) & np.isfinite(e)
    a0, e0 = np.where(finite, a, 0.0), np.where(finite, e, 0.0)
    return (finite & (np.abs(a0 - e0) > atol + rtol * np.abs(e0))) | (nan_a != nan_e) | inf_diff


def element_errors(actual, expected) -> np.ndarray:
    """Each element's error: ``|a - e|`` where both are finite, inf where a NaN or infinity disagrees, else 0."""
    a, e = f64(actual), f64(expected)
    finite = np.isfinite(a) & np.isfinite(e)
    err = np.where(finite, np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0)), 0.0)
    disagree = (np.isnan(a) != np.isnan(e)) | ((np.isinf(a) | np.isinf(e)) & ~finite & (a != e)
                                               & ~np.isnan(a) & ~np.isnan(e))
    return np.where(disagree, np.inf, err)


def worst_index(actual, expected, atol) -> tuple:
    """The worst element, the one definition every consumer reports: the largest error / its tolerance
    (``element_errors``; ties go to the first)."""
    err = element_errors(actual, expected)
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), err.shape)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(err / np.maximum(tol, 1e-300))), err.shape))


def describe_mismatch(actual, expected, *, atol: float, rtol: float = 0.0, name: str = "output",
                      show: int = 5) -> str | None:
    """None when close; otherwise a report: counts, worst element, first mismatches, NaN/inf disagreements."""
    a, e = f64(actual), f64(expected)
    if a.shape != e.shape:
        return f"{name}: shape {a.shape} != expected {e.shape}"
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    inf_diff = (np.isinf(a) | np.isinf(e)) & ~(nan_a | nan_e) & (a != e)
    bad = mismatch(a, e, atol, rtol)
    if not bad.any():
        return None
    atol_text = f"{float(np.max(atol)):.3g}" if np.ndim(atol) == 0 else f"per element, up to {float(np.max(atol)):.3g}"
    lines = [f"{name}: {int(bad.sum())} of {a.size} elements differ (atol={atol_text}, rtol={rtol:.3g}), shape {a.shape}"]
    if (nan_a & ~nan_e).any():
        lines.append(f"  NaN in actual where expected is a number: {int((nan_a & ~nan_e).sum())}, "
                     f"first at {tuple(int(i) for i in np.argwhere(nan_a & ~nan_e)[0])}")
    if (nan_e & ~nan_a).any():
        lines.append(f"  number in actual where expected is NaN: {int((nan_e & ~nan_a).sum())}")
    if inf_diff.any():
        lines.append(f"  inf mismatches: {int(inf_diff.sum())}, first at {tuple(int(i) for i in np.argwhere(inf_diff)[0])}")
    atol_at = np.broadcast_to(np.asarray(atol, dtype=np.float64), a.shape)
    w = worst_index(a, e, atol_at + rtol * np.abs(np.where(np.isfinite(e), e, 0.0)))
    mag = float(np.abs(e[np.isfinite(e)]).max(initial=0.0))
    lines.append(f"  worst (largest |diff| / atol) at {w}: |diff| {element_errors(a[w], e[w]):.4g}, atol "
                 f"{atol_at[w]:.3g}; actual {a[w]:.6g}, expected {e[w]:.6g}; max |expected| {mag:.4g}")
    for idx in np.argwhere(bad)[:show]:
        t = tuple(int(i) for i in idx)
        lines.append(f"  at {t}: actual {a[t]:.6g}, expected {e[t]:.6g}, diff {abs(a[t] - e[t]):.3g}, atol {atol_at[t]:.3g}")
    return "\n".join(lines)


def assert_close(actual, expected, *, atol: float, rtol: float = 0.0, name: str = "output",
                 allow_vacuous: bool = False, diagnose: Callable | None = None) -> None:
    """Fail with a readable report unless ``|actual - expected| <= atol + rtol * |expected|`` everywhere,
    with NaN exactly where expected has NaN and equal infinities.

    Unless ``allow_vacuous``, also fail when an all-zero ``actual`` would have passed: such a test proves nothing.
    ``diagnose(actual, expected, atol) -> str``: a failure's diagnosis in the inputs' terms, added to the message
    (``kernels.testing.diagnosis.for_batch`` for attention).
    """
    msg = describe_mismatch(actual, expected, atol=atol, rtol=rtol, name=name)
    if msg is not None:
        if diagnose is not None:
            try:
                msg += f"\n  diagnosis: {diagnose(actual, expected, atol)}"
            except Exception as exc:  # the diagnosis explains the failure; it must not replace it
                msg += f"\n  (no diagnosis: {type(exc).__name__}: {exc})"
        raise AssertionError(msg)
    _log_error(actual, expected, atol, name)
    if not allow_vacuous:
        e = f64(expected)
        zeros_pass = describe_mismatch(np.zeros_like(e), np.where(np.isnan(e), 0.0, e), atol=atol, rtol=rtol) is None
        if zeros_pass:
            raise AssertionError(f"{name}: vacuous comparison: an all-zero output would pass "
                                 f"(max |expected| {np.abs(e[np.isfinite(e)]).max(initial=0.0):.3g}, "
                                 f"atol up to {float(np.max(atol)):.3g})")


def _log_error(actual, expected, atol, name: str) -> None:
    """With ``SERVEKERNELS_ERROR_LOG=path`` set, append one JSON line per passing comparison (test, name, dtype,
    errors, tolerance; a deliberately wrong kernel's failing comparison is not a kernel's error): ``python -m correctness.error_summary path`` turns it into the worst error per test file and dtype."""
    path = os.environ.get("SERVEKERNELS_ERROR_LOG")
    if not path:
        return
    row = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "name": name,
           "dtype": str(getattr(actual, "dtype", "float64")).replace("torch.", ""),
           "max_abs_err": max_abs_err(actual, expected), "max_rel_err": max_rel_err(actual, expected),
           "atol_max": float(np.max(atol))}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def assert_bitwise_equal(actual, expected, *, name: str = "output") -> None:
    """Exact equality, NaN == NaN, via the raw bytes of same-dtype tensors."""
    import torch  # deferred: the judge loads without torch (check/report --help)

    a, e = actual.detach().cpu(), expected.detach().cpu()
    if a.shape != e.shape or a.dtype != e.dtype:
        raise AssertionError(f"{name}: {tuple(a.shape)}/{a.dtype} vs {tuple(e.shape)}/{e.dtype}")
    same = a.contiguous().view(torch.uint8) == e.contiguous().view(torch.uint8)
    if not bool(same.all()):
        n = int((~same).sum())
        raise AssertionError(f"{name}: {n} bytes differ; " +
                             (describe_mismatch(a, e, atol=0.0, name=name) or "(NaN payloads differ)"))
