"""The meta-device run (``python -m pytest --meta correctness``): ``meta`` stands in for CUDA up to the first launch.

Under ``--meta`` the ``device`` fixture (and ``kernels.runtime.default_device``) gives ``"meta"``, and every
function behind ``correctness.impl.T`` (each op and helper of the implementation under test) is replaced by
``stop_at_launch``: it asserts that every tensor handed to it is on the meta device, then raises
``ReachedFirstLaunch``, which the root ``conftest.py`` turns into a pass ("reached its first launch"). A builder
or test that makes one tensor on the host (``torch.zeros(n)`` without ``device=``) fails here as it would on a
GPU. It stops at the public op entry, not inside the launcher, because the validated launchers copy metadata
to the host and a meta tensor has no values. A test that passes without reaching a launch (a ``ValueError``
raised by the op's own checks before any launch, say) is counted separately in the summary.
"""
from __future__ import annotations

import dataclasses

import torch


class ReachedFirstLaunch(BaseException):
    """The test got as far as a launch with every tensor on the meta device (a BaseException, so that no
    ``except Exception`` or ``pytest.raises(ValueError)`` in a test or builder swallows it)."""


def tensors_in(obj, depth: int = 4) -> list:
    """The tensors in ``obj``: itself, inside lists, tuples, dicts and dataclasses (weight types), ``depth`` deep."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth == 0:
        return []
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors_in(o, depth - 1)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o, depth - 1)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in tensors_in(getattr(obj, f.name), depth - 1)]
    return []


def stop_at_launch(name: str):
    """A stand-in for ``name``: every tensor it is handed must be on the meta device, then the test stops."""
    def launch(*args, **kwargs):
        devices = {t.device.type for t in tensors_in((args, kwargs))}
        if devices != {"meta"}:
            raise AssertionError(f"{name} launched with tensors on {sorted(devices) or 'no device'}: "
                                 "a device mix on a GPU (build every tensor on the requested device)")
        raise ReachedFirstLaunch(name)

    launch.__name__ = name
    return launch


def stopping(provider):
    """``provider`` with each of its functions replaced by ``stop_at_launch`` (its types are kept)."""
    lookup = provider.functions

    def functions(name):
        fn = lookup(name) if callable(lookup) else lookup.get(name)
        if fn is None or isinstance(fn, type):
            return fn
        return stop_at_launch(name)

    return dataclasses.replace(provider, functions=functions)
