"""pytest-benchmark: ``fused_moe`` on the report's quick catalogue case (see perf/bench_common.py)."""
from __future__ import annotations

import pytest

from perf.bench_common import bench_gpu, bench_interpreter


def test_bench_fused_moe_interpreter(benchmark):
    bench_interpreter(benchmark, "fused_moe")


@pytest.mark.gpu
def test_bench_fused_moe_gpu(benchmark):
    bench_gpu(benchmark, "fused_moe")
