"""pytest-benchmark configuration for ``perf/test_bench_*.py`` (kept out of the default run: testpaths is
``correctness``). Smoke test: ``python -m pytest perf --benchmark-disable``; measure:
``python -m pytest perf --benchmark-autosave`` (``--graphs``: the gpu benchmarks time with CUDA graphs)."""
from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--graphs", action="store_true", default=False,
                     help="gpu benchmarks: time with CUDA graphs (perf.harness TimingPolicy.cuda_graphs)")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record where the kernels ran: the GPU's name, or "interpreter" (CPU timings are the Triton interpreter's)."""
    from kernels.runtime import cuda_available, interpreter_enabled

    if interpreter_enabled() or not cuda_available():
        machine_info["gpu"] = "interpreter"
        machine_info["triton_backend"] = "interpreter (CPU; timings are not GPU timings)"
    else:
        import torch

        machine_info["gpu"] = torch.cuda.get_device_name()
        machine_info["triton_backend"] = "cuda"
    import triton

    machine_info["triton_version"] = triton.__version__
