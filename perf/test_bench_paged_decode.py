"""pytest-benchmark: ``paged_decode`` on the report's quick catalogue case (see perf/bench_common.py)."""
from __future__ import annotations

import pytest

from perf.bench_common import bench_gpu, bench_interpreter


def test_bench_paged_decode_interpreter(benchmark):
    bench_interpreter(benchmark, "paged_decode")


@pytest.mark.gpu
def test_bench_paged_decode_gpu(benchmark):
    bench_gpu(benchmark, "paged_decode")
