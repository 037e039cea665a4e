"""Benchmarks: the GPU timing harness (``perf.harness``), the asv suite (``perf/benchmarks``), pytest-benchmark
files (``perf/test_bench_<op>.py``), the nsys recipe (``perf/nsys_profile.py``). See ``perf/README.md``."""
