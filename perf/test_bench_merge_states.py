"""pytest-benchmark: ``merge_states`` on the report's quick catalogue case (see perf/bench_common.py)."""
from __future__ import annotations

import pytest

from perf.bench_common import bench_gpu, bench_interpreter


def test_bench_merge_states_interpreter(benchmark):
    bench_interpreter(benchmark, "merge_states")


@pytest.mark.gpu
def test_bench_merge_states_gpu(benchmark):
    bench_gpu(benchmark, "merge_states")
