"""Seven modules a new user writes from scratch in plain torch get the right verdict in every consumer.

``correctness/newcomer_impls/``: a right decode and merge, a right float32 MoE and router, and five with one
planted bug each (a causal mask that lets one future key through, an int4 zero point of 7, a ``route`` that
ignores ``renormalize``, a ``fused_moe`` that renormalises the router's weights, an LSE without the scale).
``servekernels check`` (its ``run_case`` / ``spec_case``, in process) passes the right ones on every check case
of every op they provide and fails each wrong one on the case built to expose its bug; the parity suite
(``python -m pytest --impl``, one child run per module over a small selection) and the report's parity column
(``count_case``) give the same verdicts, and the causal off-by-one's and the LSE's failures name their bug's
structure in all three (the diagnosis: "the causal mask lets one future key through", "LSE = reference x
11.314 at every wrong element (1/scale = 11.31 ..."). ``route`` is a registry op: check's route cases judge the
router that ignores ``renormalize`` (it fails the case whose weights are not renormalised, passes the one whose
are, and declines DeepSeek's keywords), as does the parity suite (``correctness/test_route.py``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from kernels.impls import load
from kernels.ops import get, registry
from roofline.specs import get_spec
from servekernels.check import run_case, spec_case

pytestmark = pytest.mark.host_only("the newcomer modules are eager torch; check cases, the parity subprocess and the "
                                   "report build on default_device() themselves")

N = "correctness.newcomer_impls."
RIGHT = ("right_decode_merge", "right_moe_router")
SLOW_CASES = {"llama3-8b/decode-long-split-kv", "deepseek-v3-like/moe-fp8-prefill"}  # 5 to 10 s each here
WRONG = {  # module -> the check cases (op, case) built to expose its bug, each of which must fail it
    "causal_off_by_one_prefill": [("paged_prefill", "qwen2.5-7b/prefill-chunked"),
                                  ("paged_prefill", "gemma2-like/prefill-window64-cap50")],
    "int4_zero_seven": [("grouped_gemm_int4", "mixtral-8x7b-like/grouped-gemm-int4-g128")],
    "renormalizing_fused_moe": [("fused_moe", "qwen2-moe-like/moe-unnormalized-weights")],
    "route_ignores_renormalize": [("route", "qwen1.5-moe/route-unnormalized-bf16")],
    "lse_without_scale": [("paged_decode", "gemma2-like/decode-window64-cap50"),
                          ("paged_decode", "qwen2.5-7b/decode-ragged")],
}
STRUCTURE = {  # module -> what its failure's diagnosis must say (check's rows, pytest's message, the report's detail)
    "causal_off_by_one_prefill": "the causal mask lets one future key through",
    "lse_without_scale": "at every wrong element (1/scale = ",  # "LSE = reference x 11.314 at every wrong ..."
    "int4_zero_seven": "the symmetric zero point is taken as 7, not 8",
    "renormalizing_fused_moe": "the router's weights are renormalised to sum 1",
}
PASSES_TOO = {  # a wrong module on a case its bug cannot reach: it passes (its bug is the only one)
    "int4_zero_seven": [("grouped_gemm_int4", "llama-like/grouped-gemm-int4-g32-zp-k-tail")],  # zero points
    "renormalizing_fused_moe": [("fused_moe", "mixtral-8x7b-like/moe-decode")],  # weights already sum to 1
    "route_ignores_renormalize": [("route", "mixtral-8x7b/route-renormalized")],  # renormalised anyway
}


def _check(module: str, op: str, case: str):
    spec = get(op)
    return run_case(spec_case(spec, case, spec.check[case], load(N + module)))


def _right_cases():
    out = []
    for module in RIGHT:
        provider = load(N + module)
        for spec in registry().values():
            if provider.provides(spec.name):
                for case in spec.check:
                    marks = [pytest.mark.slow] if case in SLOW_CASES else []
                    out.append(pytest.param(module, spec.name, case, marks=marks, id=f"{module}-{case}"))
    return out


def _rows(results) -> list:
    return [(r.op, r.max_abs_err, r.atol, r.status, r.detail[:300]) for r in results]


# what each right module does not write (it declines those cases, naming the feature; it fails none)
UNWRITTEN = {"right_decode_merge": ("unsupported: sinks:",), "right_moe_router": ("unsupported: weights=mxfp4:",)}


@pytest.mark.parametrize("module, op, case", _right_cases())
def test_check_passes_a_right_module(module, op, case):
    results = _check(module, op, case)
    declined = [r for r in results if r.status.startswith(UNWRITTEN[module])]
    assert results and all(r.ok and not r.status for r in results if r not in declined), _rows(results)


def test_the_right_modules_provide_what_they_claim():
    assert {op for op in (*registry(), "moe_permute") if load(N + "right_moe_router").provides(op)} == \
        {"fused_moe", "route", "moe_permute"}
    assert {op for op in registry() if load(N + "right_decode_merge").provides(op)} == {"paged_decode", "merge_states"}


@pytest.mark.parametrize("module, op, case", [(m, op, c) for m, pairs in WRONG.items() for op, c in pairs])
def test_check_fails_a_wrong_module(module, op, case):
    results = _check(module, op, case)
    assert any(not r.ok for r in results), _rows(results)
    if module == "lse_without_scale":  # the output is right: only the LSE fails
        assert {r.op for r in results if not r.ok} == {"lse"}, _rows(results)
    if module in STRUCTURE:  # every failing row names the bug's structure
        assert all(STRUCTURE[module] in r.diagnosis for r in results if not r.ok), \
            [(r.op, r.diagnosis) for r in results]


@pytest.mark.parametrize("module, op, case", [(m, op, c) for m, pairs in PASSES_TOO.items() for op, c in pairs])
def test_check_passes_a_wrong_module_where_its_bug_cannot_show(module, op, case):
    results = _check(module, op, case)
    assert results and all(r.ok and not r.status for r in results), _rows(results)


# ------------------------------------------------------------------------------------------- the parity suite

PARITY = {  # module -> (test files, -k selection, the tests that must fail it; none: every selected test passes)
    "right_decode_merge": (["correctness/test_paged_decode.py", "correctness/test_merge_states.py"],
                           "(test_parity and 1-64-16) or test_sliding_window or test_soft_cap or fp8 or "
                           "test_merge_of_a_split or empty_partials or all_partials_empty or extreme_lse", ()),
    "right_moe_router": (["correctness/test_fused_moe.py", "correctness/test_route.py"],
                         "(test_dense_matches_reference and bfloat16) or test_int4_matches_reference or "
                         "weights_and_slots or test_route_matches_reference or test_ties or renormalize_sums", ()),
    "causal_off_by_one_prefill": (["correctness/test_paged_prefill.py"],
                                  "test_prefill_matches_reference and (gqa5 or window13 or mha)",
                                  ("test_prefill_matches_reference",)),
    "int4_zero_seven": (["correctness/test_grouped_gemm_int4.py"], "test_parity_skewed", ("test_parity_skewed",)),
    "route_ignores_renormalize": (["correctness/test_route.py"],
                                  "test_route_matches_reference or renormalize_sums",
                                  ("test_renormalize_sums_to_one_and_off_keeps_softmax",)),
    "renormalizing_fused_moe": (["correctness/test_fused_moe.py"], "weights_and_slots",
                                ("test_weights_and_slots_matter",)),
    "lse_without_scale": (["correctness/test_paged_decode.py"], "(test_parity and 1-64-16) or test_sliding_window",
                          ("test_parity", "test_sliding_window")),
}


def _outcomes(proc) -> dict[str, str]:
    """{test id: PASSED/FAILED/ERROR/SKIPPED}, from pytest's -rA summary lines (one --impl: every item is its)."""
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(FAILED|PASSED|ERROR|SKIPPED) (?:\[\d+\] )?(\S+)", line)
        if m:
            out[m.group(2)] = m.group(1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("module", list(PARITY))
def test_the_parity_suite_judges_a_newcomer(module):
    files, select, must_fail = PARITY[module]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
                           *files, "--impl", N + module, "-k", select],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=600)
    text = proc.stdout[-5000:] + proc.stderr[-2000:]
    outcomes = _outcomes(proc)
    assert outcomes, text
    failed = {t for t, o in outcomes.items() if o in ("FAILED", "ERROR")}
    if not must_fail:
        assert proc.returncode == 0 and not failed, text
        assert sum(o == "PASSED" for o in outcomes.values()) >= 4, text
    else:
        assert proc.returncode == 1, text
        for test in must_fail:
            assert any(test in t for t in failed), (test, text)
        if module in STRUCTURE:  # the assertion's message carries the diagnosis
            assert STRUCTURE[module] in proc.stdout, text


# ------------------------------------------------------------------------------------ the report's parity column

REPORT = {  # module -> [(catalogue case, the parity verdict it must get)]
    "right_decode_merge": [("gemma2-9b/decode/b16-ctx8k-window4k-cap50", "pass"),
                           ("llama3-8b/merge/decode-b64-s2", "pass")],
    "right_moe_router": [("mixtral/moe-int4/t16", "pass")],
    "renormalizing_fused_moe": [("mixtral/moe-int4/t16", "FAIL")],  # the catalogue's weights sum to less than 1
    "lse_without_scale": [("gemma2-9b/decode/b16-ctx8k-window4k-cap50", "FAIL")],
    "causal_off_by_one_prefill": [("llama3-8b/prefill/full-2k", "FAIL")],
    "int4_zero_seven": [("mixtral/int4-w13/decode-t16", "FAIL")],
}


@pytest.mark.slow
@pytest.mark.parametrize("module, case, verdict", [(m, c, v) for m, pairs in REPORT.items() for c, v in pairs])
def test_the_report_judges_a_newcomer(module, case, verdict):
    from roofline.catalogue import catalogue
    from roofline.report import count_case

    row = count_case(next(c for c in catalogue() if c.name == case), get_spec("h100-sxm"), provider=load(N + module))
    assert row["parity"] == verdict, row.get("parity_detail")
    if module in STRUCTURE:
        assert STRUCTURE[module] in row["parity_detail"], row["parity_detail"]
    assert row.get("counted_by") == "torch dispatch (eager aten ops)", row  # eager torch: counted op by op
