"""fp8 below compute capability 8.9 is a clear ValueError, before anything launches (capability faked here).

``kernels.triton.common.device_capability`` is the one lookup the launchers use; patching it to (8, 0) (an
A100) makes this CPU's tensors stand in for such a GPU. The kernels are recorders (``perf.launch_recorder``),
so a check that came too late would show up as a recorded launch.
"""
from __future__ import annotations

import pytest

import kernels.triton as T
import kernels.triton.common as common
from correctness.launch_cases import CASES
from perf.launch_recorder import recorded_launches

pytestmark = pytest.mark.host_only("kernels replaced by perf.launch_recorder and the capability faked: nothing launches (host tensors stand in for a GPU)")

FP8_CASES = {"paged_decode-fp8": "k_cache", "paged_prefill-fp8": "k_cache", "write_kv-fp8": "k_cache",
             "grouped_gemm_fp8": "a_fp8", "quantize_fp8_act": "a", "fused_moe-fp8": "w13"}


def _run(case, validate=True):
    op, args, kwargs, hints = CASES[case]("cpu")
    return getattr(T, op)(*args, **kwargs, **hints, validate=validate)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("case", sorted(FP8_CASES))
def test_fp8_below_sm89_names_the_argument_and_the_capability(case, validate, monkeypatch):
    monkeypatch.setattr(common, "device_capability", lambda device: (8, 0))
    with recorded_launches() as launches, pytest.raises(ValueError, match=rf"^{FP8_CASES[case]}: .*8\.9.* 8\.0"):
        _run(case, validate)
    assert not launches


@pytest.mark.parametrize("cap", [(8, 9), (9, 0)])
@pytest.mark.parametrize("case", sorted(FP8_CASES))
def test_fp8_at_or_above_sm89_launches(case, cap, monkeypatch):
    """The positive control: the same calls launch on an Ada or Hopper capability."""
    monkeypatch.setattr(common, "device_capability", lambda device: cap)
    with recorded_launches() as launches:
        _run(case)
    assert launches


@pytest.mark.parametrize("case", ["paged_decode", "paged_prefill", "write_kv", "grouped_gemm", "fused_moe-int4"])
def test_non_fp8_calls_run_below_sm89(case, monkeypatch):
    monkeypatch.setattr(common, "device_capability", lambda device: (8, 0))
    with recorded_launches() as launches:
        _run(case)
    assert launches


def test_capability_lookup_is_none_off_cuda():
    import torch

    assert common.device_capability(torch.device("cpu")) is None
    assert common.device_capability(torch.device("meta")) is None
