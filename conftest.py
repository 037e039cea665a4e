"""Root pytest configuration: interpreter on without a GPU (before triton is imported), markers, seeds."""
from __future__ import annotations

import random

import numpy as np
import pytest

from kernels.runtime import configure_triton, cuda_available

BACKEND = configure_triton()  # must run before anything imports triton


def pytest_addoption(parser):
    parser.addoption("--impl", action="append", default=None, metavar="NAME",
                     help="implementation the parity suite judges: servekernels (default), reference, torch, vllm, "
                          "an entry point of servekernels.impls or a module path pkg.mod[:obj] (repeatable)")


def _impls(config) -> list[str]:
    return config.getoption("impl") or ["servekernels"]


def pytest_report_header(config):
    return f"servekernels: triton backend = {BACKEND}; implementations under test = {', '.join(_impls(config))}"


def _is_parity(module) -> bool:
    from correctness.impl import T

    return any(getattr(module, name, None) is T for name in ("T", "K", "tk"))


def pytest_generate_tests(metafunc):
    """Parity modules (``T`` is ``correctness.impl.T``) run once per ``--impl``."""
    if "_implementation" in metafunc.fixturenames and _is_parity(metafunc.module):
        names = _impls(metafunc.config)
        if len(names) > 1:
            metafunc.parametrize("_implementation", names, indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def _implementation(request):
    """The provider ``correctness.impl.T`` resolves to for this module's tests."""
    from correctness import impl
    from kernels.impls import load

    name = getattr(request, "param", None) or _impls(request.config)[0]
    try:
        provider = load(name)
    except Exception as exc:  # noqa: BLE001 - an --impl that does not load fails its tests loudly
        raise pytest.UsageError(f"--impl {name}: {exc}") from exc
    impl.set_current(provider)
    yield provider
    impl.set_current(None)


def pytest_collection_modifyitems(config, items):
    from kernels.impls import load

    impls = _impls(config)
    providers = {}
    for item in items:
        name = item.callspec.params.get("_implementation") if hasattr(item, "callspec") else None
        name = name or impls[0]
        parity = _is_parity(item.module) if item.module else False
        if not parity and "servekernels" not in impls and "correctness" in item.path.parts:
            item.add_marker(pytest.mark.skip(reason="not a parity test: runs with --impl servekernels"))
            continue
        if parity:
            if name not in providers:
                providers[name] = load(name)
            p = providers[name]
            if "servekernels" in item.keywords and not p.internal:
                item.add_marker(pytest.mark.skip(reason=f"about servekernels' own kernels, not {name}'s"))
                continue
            skip = p.unsupported_test(item.nodeid)
            if skip:
                item.add_marker(pytest.mark.skip(reason=f"{name}: unsupported: {skip}"))
                continue
            why = p.deviation_for(item.nodeid)
            if why:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"{name}: known deviation: {why}"))
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
