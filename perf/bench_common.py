"""One runner for every ``perf/test_bench_<op>.py`` file: same inputs as the report, parity re-checked.

On the CPU a benchmark times the Triton kernel under the interpreter at the case's scaled-down shape (useful to
see interpreter-time regressions, not GPU speed; machine info says "interpreter"). On a GPU it times the full
model shape: pytest-benchmark's host timer around a synchronised call, with the harness's cold-L2 CUDA-event
median recorded in ``extra_info`` (``device_median_us``, ``device_p20_us``, ``device_p80_us``).
"""
from __future__ import annotations

import pytest


def quick_case(op: str):
    from roofline.catalogue import catalogue

    cases = [c for c in catalogue() if c.op == op]
    return next((c for c in cases if c.quick), cases[0])


def _prepared(op, shape, device):
    from roofline import ops

    try:
        return ops.prepare(op, shape, device)
    except (ops.Unavailable, ModuleNotFoundError) as exc:
        pytest.fail(f"{op}: not available in this build ({exc})")


def bench_interpreter(benchmark, op: str) -> None:
    from kernels.runtime import interpreter_enabled

    if not interpreter_enabled():
        pytest.skip("a GPU is here: the gpu benchmark of this op runs instead")
    case = quick_case(op)
    prep = _prepared(op, case.small, "cpu")
    benchmark.extra_info.update(case=case.name, shape="scaled-down (interpreter)", device="interpreter")
    out = benchmark.pedantic(prep.run, rounds=2, iterations=1, warmup_rounds=0)
    ok, rel, detail = prep.check(out, prep.expected())
    assert ok, detail
    benchmark.extra_info["max_rel_err"] = rel


def bench_gpu(benchmark, op: str) -> None:
    import torch

    from perf.harness import DEFAULT_POLICY, measure_provider

    case = quick_case(op)
    prep = _prepared(op, case.shape, "cuda")

    def check(out):
        ok, _, detail = prep.check(out, prep.expected())
        assert ok, detail

    timing = measure_provider(op, "servekernels", prep.args, prep.kwargs, policy=DEFAULT_POLICY, check=check)
    benchmark.extra_info.update(case=case.name, shape="full", device=torch.cuda.get_device_name(),
                                device_median_us=timing.median_us, device_p20_us=timing.p20_us,
                                device_p80_us=timing.p80_us, policy=timing.policy)

    def synced():
        out = prep.run()
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=3)
