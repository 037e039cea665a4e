"""pytest-benchmark: ``paged_prefill`` on the report's quick catalogue case (see perf/bench_common.py)."""
from __future__ import annotations

import pytest

from perf.bench_common import bench_gpu, bench_interpreter


def test_bench_paged_prefill_interpreter(benchmark):
    bench_interpreter(benchmark, "paged_prefill")


@pytest.mark.gpu
def test_bench_paged_prefill_gpu(benchmark):
    bench_gpu(benchmark, "paged_prefill")
