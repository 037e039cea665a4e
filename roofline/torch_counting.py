"""Count the memory traffic of an eager torch implementation: every aten op it dispatches is one launch that
reads its tensor inputs once and writes its outputs once (an eager kernel's HBM traffic, no fusion, no cache).

``count_torch()`` is a ``TorchDispatchMode``: inside the ``with`` block, each aten op that moves data records a
``TorchLaunch`` (the op's name, bytes read per schema argument, bytes written). What counts:

- reads: each tensor argument's view, once per op however often it is passed (``x + x`` reads ``x`` once), at
  the bytes the view spans: numel x element size, a stride-0 (expanded) dimension counted once;
- writes: each tensor the op returns (an in-place op returns the argument it writes; an ``out=`` argument is
  written, not read); ops that only write (``fill_``, ``zero_``, ``copy_``'s destination, random fills) do not
  read what they overwrite;
- a gather (``index``, ``index_select``, ``gather``, ``embedding``, ``take``) reads of its source at most what it
  writes (the indexed rows, not the whole table);
- nothing for ops that move no data: views and metadata (``view``, ``expand``, ``as_strided``, ``t``,
  ``transpose``, ``permute``, ``select``, ``slice``, ``unsqueeze``, ``squeeze``, ``detach``, ``alias``,
  ``_unsafe_view``: every op whose schema returns an alias of an argument it does not write) and allocations
  (``empty``, ``empty_like``, ``empty_strided``, ``new_empty``).

The ops seen are those the eager kernel runs (below autograd, composite ops decomposed: ``matmul`` arrives as
``mm``/``bmm``, ``.contiguous()`` of a transposed tensor as ``clone``). The counter has the attributes of
``roofline.counting.TrafficCounter`` the report reads (``launches``, ``total_bytes``, ``kernels()``, each
launch's ``loads``/``stores``/``atomics``); ``programs`` is None (an eager op's grid is not visible here).

Works on any device (the data is never read), with or without the Triton interpreter.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

COUNTED_BY = "torch dispatch (eager aten ops)"  # the report's counted_by (roofline.report_counting)

# ops that allocate without writing, or only read metadata: no data moves
_NO_DATA = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view", "detach",
            "alias", "lift_fresh", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_contiguous",
            "is_same_size", "resize_", "set_"}
# gathers: the source (their first argument) is read only where indexed, at most what they write
_GATHER = {"index", "index_select", "gather", "embedding", "take"}
# in-place ops that overwrite their written argument without reading it
_WRITE_ONLY = {"fill_", "zero_", "copy_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_",
               "geometric_", "log_normal_", "cauchy_"}


@dataclass
class TorchLaunch:
    """One eager aten op: bytes read per schema argument, bytes written (``"out"``, or the written argument)."""

    kernel: str
    loads: dict = field(default_factory=dict)
    stores: dict = field(default_factory=dict)
    atomics: dict = field(default_factory=dict)  # always empty (kept for ``roofline.attribution``)
    grid: tuple = ()

    @property
    def load_bytes(self) -> int:
        return int(sum(self.loads.values()))

    @property
    def store_bytes(self) -> int:
        return int(sum(self.stores.values()))

    @property
    def atomic_bytes(self) -> int:
        return 0


class TorchTrafficCounter:
    """Everything counted inside one ``count_torch()`` block."""

    programs = None  # an eager op's grid is not visible from Python

    def __init__(self) -> None:
        self.launches: list[TorchLaunch] = []
        self.failure: str | None = None  # why the counts are incomplete (an op whose arguments could not be read)

    @property
    def load_bytes(self) -> int:
        return sum(launch.load_bytes for launch in self.launches)

    @property
    def store_bytes(self) -> int:
        return sum(launch.store_bytes for launch in self.launches)

    @property
    def total_bytes(self) -> int:
        return self.load_bytes + self.store_bytes

    def kernels(self) -> list[str]:
        return list(dict.fromkeys(launch.kernel for launch in self.launches))


def view_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor view spans: numel x element size, a stride-0 (broadcast) dimension counted once."""
    n = math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)
    return (n if t.numel() else 0) * t.element_size()


def _key(t: torch.Tensor):
    return t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype


def moves_no_data(func) -> bool:
    """True for a view or metadata op (its outputs alias an argument it does not write) or an allocation."""
    name = func._schema.name.split("::")[-1]
    if name in _NO_DATA:
        return True
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def record(counter: TorchTrafficCounter, func, args, kwargs, out) -> None:
    """Add the launch of one aten op (``func(*args, **kwargs) -> out``) to ``counter``, unless it moves no data."""
    if moves_no_data(func):
        return
    schema = func._schema
    name = schema.name.split("::")[-1]
    written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    bound = dict(zip((a.name for a in schema.arguments if not a.kwarg_only), args)) | dict(kwargs)
    launch = TorchLaunch(name)
    seen, wrote = set(), set()
    for arg, value in bound.items():
        if arg in written and (name in _WRITE_ONLY or _is_out(schema, arg)):
            continue  # overwritten, not read
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor) and _key(t) not in seen:
                seen.add(_key(t))
                launch.loads[arg] = launch.loads.get(arg, 0) + view_bytes(t)
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor) and _key(t) not in wrote:
            wrote.add(_key(t))
            launch.stores["out"] = launch.stores.get("out", 0) + view_bytes(t)
    source = schema.arguments[0].name if schema.arguments else None
    if name in _GATHER and source in launch.loads:
        launch.loads[source] = min(launch.loads[source], launch.store_bytes)
    counter.launches.append(launch)


def _is_out(schema, arg: str) -> bool:
    """``arg`` is an ``out=`` argument (keyword-only and written): the op writes it without reading it."""
    return any(a.name == arg and a.kwarg_only for a in schema.arguments)


class _CountingMode(TorchDispatchMode):
    def __init__(self, counter: TorchTrafficCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.counter.failure is None:
            try:
                record(self.counter, func, args, kwargs, out)
            except Exception as exc:  # an op we cannot read: say so, never change what the implementation does
                self.counter.failure = f"{func}: {type(exc).__name__}: {exc}"[:300]
        return out


@contextlib.contextmanager
def count_torch():
    """Count the eager aten ops dispatched in the block; yields a ``TorchTrafficCounter``."""
    counter = TorchTrafficCounter()
    with _CountingMode(counter):
        yield counter
