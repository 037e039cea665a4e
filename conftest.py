"""Root pytest configuration: interpreter on without a GPU (before triton is imported), markers, seeds."""
from __future__ import annotations

import random

import numpy as np
import pytest

from kernels.runtime import configure_triton, cuda_available

BACKEND = configure_triton()  # must run before anything imports triton


def pytest_report_header(config):
    return f"servekernels: triton backend = {BACKEND}"


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here; the kernels ran under the interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state (python, numpy's legacy global, torch)."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def device() -> str:
    from kernels.runtime import default_device

    return default_device()
