"""A wrong implementation reads as wrong everywhere; a right one passes everywhere.

The modules in ``correctness/wrong_impls/`` are what a user would pass with ``--impl``: a decode that drops its
newest key, attention with a base-2 LSE, attention that ignores ``sliding_window`` or ``soft_cap``, and the float64
reference wrapped as a kernel. Each wrong one must FAIL in ``servekernels check`` (the cheapest check case that
names its feature), in the parity suite (``python -m pytest --impl``) and in the report's parity column; the
wrapper must pass all three. This is also the proof (issue 11, hole 3) that the check and report cases can fail:
every feature they name changes their output.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kernels.impls import load
from kernels.ops import get
from roofline.specs import get_spec
from servekernels.check import run_case, spec_case

pytestmark = pytest.mark.host_only("the wrong modules and the wrapper are float64 references (no kernel); check cases, the parity subprocess and the report build on default_device() themselves")

W = "correctness.wrong_impls."
WRONG = {  # module -> (op, check case that must fail)
    "dropped_newest_key": [("paged_decode", "gemma2-like/decode-window64-cap50"),
                           ("paged_decode", "qwen2.5-7b/decode-ragged")],
    "base2_lse": [("paged_decode", "gemma2-like/decode-window64-cap50"),
                  ("merge_states", "llama3-8b/merge-s2-with-empty-partials")],
    "ignored_window": [("paged_decode", "gemma2-like/decode-window64-cap50"),
                       ("paged_prefill", "gemma2-like/prefill-window64-cap50")],
    "ignored_soft_cap": [("paged_decode", "gemma2-like/decode-window64-cap50"),
                         ("paged_prefill", "gemma2-like/prefill-window64-cap50")],
    "renormalizing_moe": [("fused_moe", "qwen2-moe-like/moe-unnormalized-weights")],
}


def _check(module: str, op: str, case: str):
    spec = get(op)
    return run_case(spec_case(spec, case, spec.check[case], load(W + module)))


@pytest.mark.parametrize("module, op, case", [(m, op, c) for m, pairs in WRONG.items() for op, c in pairs])
def test_check_fails_a_wrong_module(module, op, case):
    results = _check(module, op, case)
    assert any(not r.ok for r in results), f"{module} passed {case}: {[(r.op, r.max_abs_err, r.atol) for r in results]}"


@pytest.mark.parametrize("op, case", [("paged_decode", "gemma2-like/decode-window64-cap50"),
                                      ("paged_decode", "qwen2.5-7b/decode-ragged"),
                                      ("paged_prefill", "gemma2-like/prefill-window64-cap50")])
def test_check_passes_the_reference_wrapper(op, case):
    results = _check("reference_wrapper", op, case)
    assert results and all(r.ok and not r.status for r in results), [(r.op, r.detail[:200]) for r in results]


PARITY_SELECT = {  # wrong module -> the parity tests (of test_paged_decode.py) that must fail it
    "dropped_newest_key": "test_parity",
    "base2_lse": "test_parity",
    "ignored_window": "test_sliding_window",
    "ignored_soft_cap": "test_soft_cap",
}


@pytest.fixture(scope="module")
def parity_run():
    """One ``python -m pytest --impl A --impl B ...`` over a few decode parity tests, every module at once."""
    impls = [arg for m in (*PARITY_SELECT, "reference_wrapper") for arg in ("--impl", W + m)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
           "correctness/test_paged_decode.py", *impls,
           "-k", "(test_parity and 1-64-16) or test_sliding_window or (test_soft_cap and not overflow)"]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def _outcomes(proc, module: str) -> dict[str, str]:
    """{test id: PASSED/FAILED} of one module's parametrization, from pytest's summary lines."""
    import re

    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(FAILED|PASSED|ERROR) (\S+)", line)
        if m and f"{W}{module}" in m.group(2):
            out[m.group(2)] = m.group(1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("module", list(PARITY_SELECT))
def test_the_parity_suite_fails_a_wrong_module(parity_run, module):
    failed = [t for t, o in _outcomes(parity_run, module).items() if o == "FAILED"]
    assert any(PARITY_SELECT[module] in t for t in failed), parity_run.stdout[-4000:] + parity_run.stderr[-2000:]


@pytest.mark.slow
def test_the_parity_suite_passes_the_reference_wrapper(parity_run):
    assert parity_run.returncode == 1  # the wrong modules failed
    outcomes = _outcomes(parity_run, "reference_wrapper")
    bad = [t for t, o in outcomes.items() if o != "PASSED"]
    assert len(outcomes) >= 3 and not bad, (bad, parity_run.stdout[-3000:])


def _report_case():
    from roofline.catalogue import catalogue

    return next(c for c in catalogue() if "window" in c.name and c.op == "paged_decode")


@pytest.mark.parametrize("module", ["dropped_newest_key", "ignored_window", "ignored_soft_cap", "base2_lse"])
def test_the_report_fails_a_wrong_module(module):
    from roofline.report import count_case

    row = count_case(_report_case(), get_spec("h100-sxm"), provider=load(W + module))
    assert row["parity"] == "FAIL", row.get("parity_detail")


def test_the_report_passes_the_reference_wrapper():
    from roofline.report import count_case

    row = count_case(_report_case(), get_spec("h100-sxm"), provider=load(W + "reference_wrapper"))
    assert row["parity"] == "pass", row.get("parity_detail")
    # its numpy work is invisible to a torch dispatch mode (SERVEKERNELS_EAGER_TORCH = False)
    assert row["counting"].startswith("not counted: correctness.wrong_impls.reference_wrapper is neither Triton nor "
                                      "eager torch"), row["counting"]
