"""Replace every Triton kernel of ``kernels.triton`` by a recorder, so a launcher's host work runs alone.

Inside ``recorded_launches()`` a launch ``kernel[grid](*args, **meta)`` evaluates the grid (a callable grid
gets ``meta``, as Triton gives it) and appends a ``Launch`` instead of compiling or running anything. Every
launcher still validates, plans, allocates its outputs and builds its device-side tables; only the kernels are
gone. Used by the no-host-read test (``correctness/test_no_host_read.py``) and by ``perf/host_overhead.py``
(host time of one call with nothing else in it). The original kernel objects are restored on exit.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Launch:
    kernel: str
    grid: tuple
    args: tuple
    meta: dict


class _Recorder:
    def __init__(self, name: str, launches: list):
        self.name = name
        self._launches = launches

    def __getitem__(self, grid):
        def launch(*args, **meta):
            g = grid(meta) if callable(grid) else grid
            self._launches.append(Launch(self.name, tuple(g), args, meta))

        return launch


def _kernel_modules() -> list:
    """The modules behind ``kernels.triton``'s public names (its own table: no second list here)."""
    import kernels.triton as kt  # deferred: imports triton; recording is set up only where it runs

    return [importlib.import_module(f"kernels.triton.{m}") for m in sorted(set(kt._MODULES.values()))]


def _is_triton_function(obj) -> bool:
    from triton.runtime.jit import KernelInterface  # deferred: imports triton; recording is set up only where it runs

    return isinstance(obj, KernelInterface)


@contextmanager
def recorded_launches():
    """Yields the list that every launch made inside the block is appended to (a ``Launch`` each)."""
    launches: list[Launch] = []
    saved = []
    try:
        for mod in _kernel_modules():
            for attr, obj in list(vars(mod).items()):
                if _is_triton_function(obj):
                    saved.append((mod, attr, obj))
                    setattr(mod, attr, _Recorder(attr, launches))
        yield launches
    finally:
        for mod, attr, obj in saved:
            setattr(mod, attr, obj)
