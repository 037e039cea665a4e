"""Root pytest configuration: interpreter on without a GPU (before triton is imported), markers, seeds.

Every test in ``correctness/`` and ``perf/`` either takes the ``device`` fixture (directly or through a fixture
that depends on it) or says why it does not: ``host_only(reason)`` (launches no kernel: runs anywhere),
``interpreter(reason)`` (runs Triton on CPU tensors on purpose: skipped on a GPU box without
``TRITON_INTERPRET=1``, unless ``subprocess=True`` says it starts its own interpreter process) or ``gpu``;
collection fails listing any other. ``--meta``: the meta-device run (``correctness/meta_run.py``).

Integrity (``kernels/testing/integrity.py``): the judge's objects are snapshotted when pytest starts, before any
implementation is imported; an implementation whose import replaced one fails every test it runs, and a test
during which one was replaced fails (the judge is put back either way). The run seed (``--seed``; fixed for
the built-in providers, fresh for a user's implementation) seeds every test's global RNGs and is printed in the
header, and a run with failures ends with the line that replays it.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from kernels.runtime import configure_triton, cuda_available, interpreter_enabled

BACKEND = configure_triton()  # must run before anything imports triton


def pytest_addoption(parser):
    parser.addoption("--impl", action="append", default=None, metavar="NAME",
                     help="implementation the parity suite judges: servekernels (default), reference, torch, vllm, "
                          "an entry point of servekernels.impls or a module path pkg.mod[:obj] (repeatable)")
    parser.addoption("--meta", action="store_true", default=False,
                     help="the meta-device run: the device fixture gives 'meta' and every op of the implementation "
                          "under test checks that all its tensors are on meta, then stops the test as passed "
                          "('reached its first launch'); host_only, interpreter, gpu and meta_unsupported tests "
                          "are deselected")
    parser.addoption("--seed", type=int, default=None, metavar="N",
                     help="the run seed (default: fixed for the built-in providers, fresh for a user's "
                          "implementation); printed in the header, so a run replays with --seed N")


def _impls(config) -> list[str]:
    return config.getoption("impl") or ["servekernels"]


def pytest_configure(config):
    """The judge is snapshotted before any implementation is imported; then every ``--impl`` loads before
    collection: one that does not (no such module, a module that does not import, a missing ``:attr``, a function
    that does not take the contract's arguments) is a usage error, one line."""
    from kernels.testing.integrity import JudgeSnapshot, run_seed

    config._judge = JudgeSnapshot()  # before any implementation is imported
    config._breached = {}  # implementation -> the Breach its import caused
    from_controller = getattr(config, "workerinput", {}).get("servekernels_seed")  # an xdist worker
    config._run_seed = run_seed(config.getoption("seed") if from_controller is None else from_controller,
                                _impls(config))
    config._providers = {}  # the door: each --impl resolved once, here; objects travel after that
    for name in _impls(config):
        try:
            config._providers[name] = _load_checked(config, name)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from exc


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """Under xdist every worker runs on the controller's seed (the one the header prints)."""
    node.workerinput["servekernels_seed"] = node.config._run_seed


def pytest_report_header(config):
    return (f"servekernels: triton backend = {BACKEND}; implementations under test = {', '.join(_impls(config))}; "
            f"seed {config._run_seed}")


def _load_checked(config, name: str):
    """``load(name)``, then the judge snapshot checked: a replaced part is put back and remembered against it."""
    from kernels.impls import load
    from kernels.testing.integrity import Breach

    provider = load(name)
    try:
        config._judge.check(f"importing {name}")
    except Breach as exc:
        config._breached[name] = exc
    return provider


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

    name = getattr(request, "param", None) or _impls(request.config)[0]
    provider = request.config._providers[name]
    if name in request.config._breached:
        raise request.config._breached[name]
    if request.config.getoption("meta"):
        from correctness.meta_run import stopping

        provider = stopping(provider)
    impl.set_current(provider)
    yield provider
    impl.set_current(None)


OFF_DEVICE = ("host_only", "interpreter", "gpu")  # the markers that say why a test does not take ``device``
WHY = ("host_only", "interpreter", "meta_unsupported")  # markers whose first argument is the reason


def _top_folder(config, item) -> str | None:
    """The folder of the rootdir a test lives in (``correctness``, ``perf``), or None. Never a folder above the
    rootdir: the checkout's own name (``servekernels``, ``gpu``, ``correctness`` ...) must not change a verdict,
    which is also why every marker test here asks ``get_closest_marker`` and never the keywords of an item (pytest's
    keywords include the names of the directories above a test)."""
    try:
        parts = item.path.relative_to(config.rootpath).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


def _checked(config, item) -> bool:
    """A test under ``correctness/`` or ``perf/`` of the rootdir (what the device rule covers)."""
    return _top_folder(config, item) in ("correctness", "perf")


def _device_rule(config, items) -> None:
    """Collection fails listing every checked test that neither takes ``device`` nor says why not."""
    offenders, reasonless = [], []
    for item in items:
        if not _checked(config, item):
            continue
        for name in WHY:
            for mark in item.iter_markers(name):
                reason = mark.args[0] if mark.args else mark.kwargs.get("reason")
                if not isinstance(reason, str) or not reason.strip():
                    reasonless.append(f"{item.nodeid} ({name} without a reason)")
        if "device" in getattr(item, "fixturenames", ()):
            continue
        if not any(item.get_closest_marker(m) for m in OFF_DEVICE):
            offenders.append(item.nodeid)
    if offenders or reasonless:
        lines = [*reasonless, *offenders]
        raise pytest.UsageError(
            f"{len(offenders)} test(s) neither take the `device` fixture nor say why not (mark them "
            "host_only(reason), interpreter(reason) or gpu), " f"{len(reasonless)} marker(s) without a reason:\n  "
            + "\n  ".join(lines[:200]) + ("\n  ..." if len(lines) > 200 else ""))


def _ids_match(item, ids) -> bool:
    """``meta_unsupported(reason, ids=("reference",))`` applies only to the items whose parameter id has one of
    ``ids`` as a dash-separated part (``test_x[q-2d-reference]``); without ``ids``, to every item."""
    if not ids:
        return True
    parts = set(item.callspec.id.split("-")) if hasattr(item, "callspec") else set()
    return bool(parts & set(ids))


def _meta_selection(config, items) -> None:
    """Under ``--meta``: deselect what does not run on the ``device`` (counted, and printed in the summary)."""
    keep, counts, dropped = [], {}, []
    for item in items:
        why = next((m for m in OFF_DEVICE if item.get_closest_marker(m)), None)
        if why is None and any(_ids_match(item, m.kwargs.get("ids")) for m in item.iter_markers("meta_unsupported")):
            why = "meta_unsupported"
        if why is None:
            keep.append(item)
        else:
            counts[why] = counts.get(why, 0) + 1
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    config._meta_deselected = counts


def pytest_collection_modifyitems(config, items):
    _device_rule(config, items)
    if config.getoption("meta"):
        _meta_selection(config, items)

    impls = _impls(config)
    for item in items:
        name = item.callspec.params.get("_implementation") if hasattr(item, "callspec") else None
        name = name or impls[0]
        parity = _is_parity(item.module) if item.module else False
        if not parity and "servekernels" not in impls and _top_folder(config, item) == "correctness":
            item.add_marker(pytest.mark.skip(reason="not a parity test: runs with --impl servekernels"))
            continue
        if parity:
            p = config._providers[name]
            if item.get_closest_marker("servekernels") and not p.internal:
                item.add_marker(pytest.mark.skip(reason=f"about servekernels' own kernels, not {name}'s"))
                continue
            if item.get_closest_marker("bad_input") and not p.validates:
                item.add_marker(pytest.mark.skip(reason=f"{name} declares it does not validate its inputs "
                                                        "(validates=False): a bad-input test asks for the contract's "
                                                        "ValueError"))
                continue
            why = p.deviation_for(item.nodeid)
            if why:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"{name}: known deviation: {why}"))
    if not interpreter_enabled():
        for item in items:
            mark = item.get_closest_marker("interpreter")
            own_host_only = any(m.name == "host_only" for m in item.own_markers)  # overrides a module's mark
            if mark and not mark.kwargs.get("subprocess") and not own_host_only:
                why = mark.args[0] if mark.args else mark.kwargs.get("reason")
                item.add_marker(pytest.mark.skip(reason=f"runs Triton on CPU tensors (set TRITON_INTERPRET=1): {why}"))
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here; the kernels ran under the interpreter)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """Every test starts from the run seed's RNG state (python, numpy's legacy global, torch); after it, the
    judge is checked (a part replaced during the test fails it, and is put back)."""
    import torch

    seed = request.config._run_seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield
    request.config._judge.check(f"{request.node.nodeid}")


@pytest.fixture
def device(request) -> str:
    from kernels.runtime import default_device

    return "meta" if request.config.getoption("meta") else default_device()


@pytest.fixture(autouse=True)
def _meta_default_device(request, monkeypatch):
    """Under ``--meta``, code that asks ``kernels.runtime.default_device()`` gets "meta" too."""
    if request.config.getoption("meta"):
        import kernels.runtime

        monkeypatch.setattr(kernels.runtime, "default_device", lambda: "meta")
    yield


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """Under ``--meta``, a test stopped by ``ReachedFirstLaunch`` passed: its inputs reached a launch on meta."""
    from correctness.meta_run import ReachedFirstLaunch

    try:
        return (yield)
    except ReachedFirstLaunch as exc:
        if not pyfuncitem.config.getoption("meta"):
            raise
        pyfuncitem.user_properties.append(("meta", f"reached its first launch: {exc}"))
        return True


def pytest_terminal_summary(terminalreporter, config):
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(f"replay: the same selection with --seed {config._run_seed}")
    if not config.getoption("meta"):
        return
    passed = terminalreporter.stats.get("passed", [])
    reached = sum(1 for r in passed if any(k == "meta" for k, _ in r.user_properties))
    counts = getattr(config, "_meta_deselected", {})
    terminalreporter.write_sep("=", "meta-device run")
    terminalreporter.write_line(f"{reached} passed by reaching their first launch with only meta tensors, "
                                f"{len(passed) - reached} passed without a launch:")
    for r in passed:
        if not any(k == "meta" for k, _ in r.user_properties):
            terminalreporter.write_line(f"  {r.nodeid}")
    terminalreporter.write_line("deselected: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                                                  or "none (under xdist each worker deselects; counts not here)"))
