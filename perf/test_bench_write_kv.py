"""pytest-benchmark: ``write_kv`` on the report's quick catalogue case (see perf/bench_common.py)."""
from __future__ import annotations

import pytest

from perf.bench_common import bench_gpu, bench_interpreter


def test_bench_write_kv_interpreter(benchmark):
    bench_interpreter(benchmark, "write_kv")


@pytest.mark.gpu
def test_bench_write_kv_gpu(benchmark):
    bench_gpu(benchmark, "write_kv")
