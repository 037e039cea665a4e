"""pytest-benchmark: ``grouped_gemm`` on the report's quick catalogue case (see perf/bench_common.py)."""
from __future__ import annotations

import pytest

from perf.bench_common import bench_gpu, bench_interpreter


def test_bench_grouped_gemm_interpreter(benchmark):
    bench_interpreter(benchmark, "grouped_gemm")


@pytest.mark.gpu
def test_bench_grouped_gemm_gpu(benchmark):
    bench_gpu(benchmark, "grouped_gemm")
