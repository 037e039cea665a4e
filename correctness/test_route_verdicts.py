"""``route`` is judged like every op: ``servekernels check`` and the report's parity column fail a router that
weighs the chosen experts with the biased scores (DeepSeek-V3's bias selects, it never weighs) on the cases that
have a bias, and pass it where there is none (its bug is the only one); a Mixtral-style router that declines
DeepSeek's keywords reads "unsupported" there, not passed."""
from __future__ import annotations

import pytest

from kernels.impls import load
from kernels.ops import get
from servekernels.check import run_case, spec_case

pytestmark = pytest.mark.host_only("eager torch modules; check cases and the report build on default_device()")

BIASED = "correctness.wrong_impls.biased_weights_route"
WITH_BIAS = ["deepseek-v3/route-grouped-sigmoid-biased", "kimi-k2/route-sigmoid-biased-e384"]


def _check(module: str, case: str):
    spec = get("route")
    return run_case(spec_case(spec, case, spec.check[case], load(module)))


def _rows(results) -> list:
    return [(r.op, r.ok, r.status, r.detail[:200]) for r in results]


@pytest.mark.parametrize("case", list(get("route").check))
def test_check_fails_biased_weights_only_where_there_is_a_bias(case):
    results = _check(BIASED, case)
    if case in WITH_BIAS:
        assert [r.op for r in results if not r.ok] == ["topk_weights"], _rows(results)  # the ids are right
    else:
        assert results and all(r.ok and not r.status for r in results), _rows(results)


def test_a_softmax_router_is_unsupported_on_deepseek_cases():
    results = _check("correctness.newcomer_impls.route_ignores_renormalize", WITH_BIAS[0])
    assert [r.status for r in results] == ["unsupported: scoring: a softmax top-k router only"], _rows(results)


@pytest.mark.slow
def test_the_report_fails_biased_weights():
    from roofline.catalogue import catalogue
    from roofline.report import count_case
    from roofline.specs import get_spec

    case = next(c for c in catalogue() if c.name == "deepseek-v3/route/t16")
    row = count_case(case, get_spec("h100-sxm"), provider=load(BIASED))
    assert row["parity"] == "FAIL", row.get("parity_detail")
    right = count_case(case, get_spec("h100-sxm"), provider=load("correctness.newcomer_impls.right_moe_router"))
    assert right["parity"] == "pass", right.get("parity_detail")
