"""pytest-benchmark for every op of the registry (``kernels/ops``) on each ``--impl`` (default servekernels):
the report's quick catalogue case of the op, its inputs built by the op spec, parity re-checked with the
registry's judge after timing.

On the CPU a benchmark times the implementation under the interpreter at the case's scaled-down shape (useful
to see interpreter-time regressions, not GPU speed; machine info says "interpreter"). On a GPU it times the full
model shape through the report's timed path (``perf.harness.measure_impl``: setup untimed, ``validate=False`` and
the op's host hints for ours): pytest-benchmark's host timer around a synchronised timed-path call, with the
harness's cold-L2 CUDA-event median in ``extra_info`` (``device_median_us``, ``device_p20_us``,
``device_p80_us``, ``timed_path``, ``host_validated_us``, ``host_launch_us``). ``--graphs`` (``perf/conftest.py``)
times with CUDA graphs.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kernels.impls import NotProvidedError, Unsupported
from kernels.ops import registry
from kernels.runtime import interpreter_enabled
from perf.harness import DEFAULT_POLICY, measure_impl, timed_call
from roofline import ops


def quick_case(op: str):
    cases = registry()[op].cases()
    return next((c for c in cases if c.quick), cases[0])


def _prepared(op, shape, device, provider):
    try:
        return ops.prepare(op, shape, device, provider=provider)
    except NotProvidedError as exc:
        pytest.skip(str(exc))


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        metafunc.parametrize("impl", metafunc.config.getoption("impl") or ["servekernels"])


@pytest.fixture
def provider(impl, request):
    """The ``--impl`` provider, resolved once by ``conftest.pytest_configure``."""
    return request.config._providers[impl]


@pytest.mark.interpreter("times the scaled-down cases under the interpreter on the host (test_bench_gpu is the GPU one)")
@pytest.mark.parametrize("op", list(registry()))
def test_bench_interpreter(benchmark, op, impl, provider):
    if not interpreter_enabled():
        pytest.skip("a GPU is here: the gpu benchmark of this op runs instead")
    case = quick_case(op)
    prep = _prepared(op, case.small, "cpu", provider)
    benchmark.extra_info.update(case=case.name, impl=impl, shape="scaled-down (interpreter)", device="interpreter")
    try:
        out = benchmark.pedantic(prep.run, rounds=2, iterations=1, warmup_rounds=0)
    except Unsupported as exc:
        pytest.skip(f"{impl}: unsupported: {exc}")
    ok, rel, detail = prep.check(out, prep.expected())
    assert ok, detail
    benchmark.extra_info["max_rel_err"] = rel


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(registry()))
def test_bench_gpu(benchmark, op, impl, provider, request):
    """The report's timed path (``perf.harness.measure_impl``: setup untimed, ``validate=False`` + hints for
    ours, a peer's setup for vLLM); ``--graphs`` (``perf/conftest.py``) captures it in a CUDA graph."""
    case = quick_case(op)
    prep = _prepared(op, case.shape, "cuda", provider)
    why = provider.why_unsupported(op, prep.args, prep.kwargs)  # decided once, untimed
    if why:
        pytest.skip(f"{impl}: unsupported: {why}")
    expected = prep.expected()

    def check(out):
        ok, _, detail = prep.check_raw(out, expected)
        assert ok, detail

    policy = replace(DEFAULT_POLICY, cuda_graphs=bool(request.config.getoption("graphs", False)))
    timing = measure_impl(op, provider, prep.args, prep.kwargs, policy=policy, check=check)
    benchmark.extra_info.update(case=case.name, impl=impl, shape="full", device=torch.cuda.get_device_name(),
                                device_median_us=timing.median_us, device_p20_us=timing.p20_us,
                                device_p80_us=timing.p80_us, policy=timing.policy, timed_path=timing.timed_path,
                                host_validated_us=timing.host_validated_us, host_launch_us=timing.host_launch_us)
    call = timed_call(op, provider, prep.args, prep.kwargs)  # setup untimed

    def synced():
        out = call.fn()
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=3)
