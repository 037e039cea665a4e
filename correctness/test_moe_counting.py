"""fused_moe's counted launches are its full-size launch plan: a down GEMM that splits K at full size is counted
with its K slices' partials and the in-order sum (``kernels/ops/fused_moe.py``: counted at full size)."""
from __future__ import annotations

import pytest

from kernels.runtime import interpreter_enabled
from roofline.catalogue import catalogue
from roofline.specs import get_spec

pytestmark = [pytest.mark.skipif(not interpreter_enabled(), reason="counting needs the Triton interpreter"),
              pytest.mark.interpreter("counted traffic and launch capture patch the Triton interpreter")]


def _splits(launches: list[dict]) -> list[int]:
    return [launch["grid"][2] for launch in launches if "gemm" in launch["kernel"]]


def test_a_fused_moe_case_whose_full_plan_splits_is_counted_with_the_split_and_its_sum():
    from roofline.compile_metrics import case_launches
    from roofline.report_counting import FULL_SIZE_OPS, count_full
    from roofline.timing_model import byte_shares

    spec = get_spec("h100-sxm")
    split = []
    for case in (c for c in catalogue() if c.op == "fused_moe" and c.full_count):  # the rest: counted small only
        plan = case_launches(case, spec)  # what t_model pairs the counted launches with
        if max(_splits(plan)) > 1:
            split.append((case, plan))
    # Mixtral int4 at T = 16: w2 (80 programs of 32 x 256, K = 14336) splits in two on 132 SMs
    assert "mixtral/moe-int4/t16" in [c.name for c, _ in split]
    assert "fused_moe" in FULL_SIZE_OPS  # count_case then counts it with count_full, as checked here
    for case, plan in split:
        got = count_full(case, samples=1, gpu=spec)  # one program per launch: the launch list is whole
        counted = got["bytes_by_launch_medium"]
        assert [name for name, _ in counted] == [launch["kernel"] for launch in plan], case.name
        assert "_sum_splits_kernel" in [name for name, _ in counted], case.name
        assert got["programs_full"] == sum(l["grid"][0] * l["grid"][1] * l["grid"][2] for l in plan), case.name
        shares = byte_shares([{"kernel": launch["kernel"]} for launch in plan], counted)
        assert all(s > 0 for s in shares), (case.name, shares)  # every full-size launch has a counted partner
