"""Count the memory traffic and programs a Triton kernel really generates, under Triton's interpreter.

``count_traffic()`` patches Triton's interpreter (3.6, 3.7 and 3.9 are tested) for the duration of a ``with``
block and restores it on exit (exceptions included). A Triton whose interpreter lacks what it patches raises
``CountingUnavailable`` before anything is changed; a hook that cannot read an argument at run time sets
``TrafficCounter.failure`` and lets the kernel run on unchanged. What is patched:

- ``InterpreterBuilder.create_masked_load`` / ``create_masked_store``: every ``tl.load``/``tl.store`` ends here
  (unmasked ones, tensor-descriptor loads/stores and gathers/scatters delegate to them). Only enabled lanes count,
  and lanes of ONE access that share an address count once (a GPU merges them into one transaction: e.g. the two
  nibbles of an int4 byte loaded as a ``[K]`` tile of ``k // 2`` offsets); separate accesses always count.
  ``Launch.lane_bytes`` keeps the per-lane figure.
- ``create_atomic_rmw`` / ``create_atomic_cas``: atomics, counted separately (an RMW lane reads and writes its
  element once each at L2); ``create_atomic_load`` / ``create_atomic_store`` (triton 3.9) as loads and stores.
- ``GridExecutor.__call__``: one launch; the grid the interpreter iterates (``set_grid_dim``) gives the
  program count, and the kernel's tensor arguments give address ranges that attribute each byte to the
  argument it belongs to (``k_cache``, ``out``, ...).

What this counts is the traffic the kernel *requests* (what reaches L1/L2 with no cache reuse), which is
exactly what a kernel's schedule controls: a decode kernel that loads each K/V tile once per query head instead
of once per KV head shows 4x here (GQA 4). HBM traffic on a GPU can be lower (L2 hits) but not lower than the
op's minimum. ``unique=True`` also records the distinct bytes touched per argument (the footprint).

Needs ``TRITON_INTERPRET=1`` (``kernels.runtime.configure_triton()`` on a machine without a GPU).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import types
from dataclasses import dataclass, field

import numpy as np

from kernels import runtime  # its functions are looked up at each call (tests patch them)

_lock = threading.Lock()
_active: list["TrafficCounter"] = []


@dataclass
class Launch:
    """One kernel launch: its grid, and bytes per argument (``"?"`` = an address outside every argument)."""
    kernel: str
    grid: tuple
    loads: dict = field(default_factory=dict)  # argument -> bytes loaded (enabled lanes only)
    stores: dict = field(default_factory=dict)
    atomics: dict = field(default_factory=dict)
    masked_off_bytes: int = 0  # bytes of disabled lanes (requested by the code, not moved)
    arguments: dict = field(default_factory=dict)  # tensor argument -> (lo, hi) byte addresses it can touch
    lane_bytes: int = 0  # enabled lanes x element bytes, before merging duplicate addresses within one access
    executed: int = 0  # programs actually run (fewer than ``programs`` when counting samples programs)

    @property
    def programs(self) -> int:
        return int(np.prod(self.grid)) if self.grid else 0

    @property
    def load_bytes(self) -> int:
        return int(round(sum(self.loads.values())))

    @property
    def store_bytes(self) -> int:
        return int(round(sum(self.stores.values())))

    @property
    def atomic_bytes(self) -> int:
        return int(round(sum(self.atomics.values())))


class TrafficCounter:
    """Everything counted inside one ``count_traffic()`` block."""
    def __init__(self, unique: bool = False) -> None:
        self.launches: list[Launch] = []
        self.unique = unique
        self._addresses: dict[str, list[np.ndarray]] = {}
        self._ctx: _LaunchContext | None = None
        self.failure: str | None = None  # why the counts are incomplete (a hook could not read its arguments)

    # totals ------------------------------------------------------------------------------------------------
    @property
    def load_bytes(self) -> int:
        return sum(launch.load_bytes for launch in self.launches)

    @property
    def store_bytes(self) -> int:
        return sum(launch.store_bytes for launch in self.launches)

    @property
    def atomic_bytes(self) -> int:
        return sum(launch.atomic_bytes for launch in self.launches)

    @property
    def total_bytes(self) -> int:
        """Loads + stores + atomics (an atomic lane counted once per direction: read and write)."""
        return self.load_bytes + self.store_bytes + 2 * self.atomic_bytes

    @property
    def programs(self) -> int:
        return sum(launch.programs for launch in self.launches)

    def argument_of(self, tensor) -> set[str]:
        """Names under which ``tensor``'s first byte was passed to any launch (to find e.g. the K cache)."""
        ptr = tensor.data_ptr()
        return {n for launch in self.launches for n, (lo, hi) in launch.arguments.items() if lo <= ptr < hi}

    def kernels(self) -> list[str]:
        return list(dict.fromkeys(launch.kernel for launch in self.launches))

    def by_argument(self, kind: str = "all") -> dict[str, int]:
        """Bytes per kernel argument name over all launches; kind: "load", "store", "atomic" or "all"."""
        out: dict[str, int] = {}
        for launch in self.launches:
            parts = {"load": [launch.loads], "store": [launch.stores], "atomic": [launch.atomics, launch.atomics],
                     "all": [launch.loads, launch.stores, launch.atomics, launch.atomics]}[kind]
            for d in parts:
                for k, v in d.items():
                    out[k] = out.get(k, 0) + int(round(v))
        return out

    def unique_bytes(self, argument: str) -> int:
        """Distinct bytes of ``argument`` touched (needs ``unique=True``): the footprint, not the traffic."""
        if not self.unique:
            raise ValueError("unique: count_traffic(unique=True) is needed for footprints")
        parts = self._addresses.get(argument)
        return int(np.unique(np.concatenate(parts)).size) if parts else 0

    def summary(self) -> dict:
        return {"load_bytes": self.load_bytes, "store_bytes": self.store_bytes, "atomic_bytes": self.atomic_bytes,
                "total_bytes": self.total_bytes, "programs": self.programs, "launches": len(self.launches),
                "kernels": self.kernels(), "by_argument": self.by_argument(), "failure": self.failure}

    # recording ---------------------------------------------------------------------------------------------
    def _record(self, kind: str, ptrs, mask, elem_bytes: int) -> None:
        ctx = self._ctx
        addrs = np.asarray(ptrs, dtype=np.int64).ravel()
        enabled = np.broadcast_to(np.asarray(mask, dtype=bool), np.shape(ptrs)).ravel() if mask is not None \
            else np.ones(addrs.shape, dtype=bool)
        if ctx is None:  # a device function called outside a launch: attribute to nothing
            ctx = self._ctx = _LaunchContext(Launch("<no launch>", ()), [], np.zeros(0, np.int64),
                                             np.zeros(0, np.int64))
            self.launches.append(ctx.launch)
        ctx.launch.masked_off_bytes += int((~enabled).sum()) * elem_bytes * ctx.weight
        addrs = addrs[enabled]
        if addrs.size == 0:
            return
        ctx.launch.lane_bytes += int(addrs.size) * elem_bytes * ctx.weight
        if kind != "atomic":
            # lanes of one load/store that hit the same address are one memory transaction on a GPU (a warp's
            # duplicate addresses are broadcast/merged), e.g. two nibbles unpacked from one int4 byte
            addrs = np.unique(addrs)
        target = getattr(ctx.launch, {"load": "loads", "store": "stores", "atomic": "atomics"}[kind])
        owner = ctx.owner(addrs)
        counts = np.bincount(owner + 1, minlength=len(ctx.names) + 1)
        for i, c in enumerate(counts):
            if c:
                name = "?" if i == 0 else ctx.names[i - 1]
                target[name] = target.get(name, 0) + int(c) * elem_bytes * ctx.weight
        if self.unique:
            for i in np.unique(owner):
                name = "?" if i < 0 else ctx.names[i]
                sel = addrs[owner == i]
                # every byte of each element (an element of 2 bytes at a covers a and a + 1)
                spans = (sel[:, None] + np.arange(elem_bytes)[None, :]).ravel()
                self._addresses.setdefault(name, []).append(np.unique(spans))


class _LaunchContext:
    """Address ranges of one launch's tensor arguments, sorted, for attributing addresses to arguments."""
    def __init__(self, launch: Launch, names, lo, hi):
        self.launch, self.names, self.lo, self.hi = launch, list(names), np.asarray(lo), np.asarray(hi)
        self.weight = 1  # programs this one stands for (sampled counting)

    def owner(self, addrs: np.ndarray) -> np.ndarray:
        """Index (into names) of the argument whose extent holds each address; -1 for none. Overlapping
        extents (interleaved views of one buffer) go to the argument that starts last at or below the address;
        arguments starting at the same address (an alias, e.g. a placeholder passed for an output the launch
        does not write) go to the first one in the signature."""
        if not self.names:
            return np.full(addrs.shape, -1)
        order = np.lexsort((-np.arange(len(self.lo)), self.lo))  # by start; equal starts: first argument last
        idx = np.searchsorted(self.lo[order], addrs, side="right") - 1
        ok = idx >= 0
        cand = np.where(ok, order[np.clip(idx, 0, None)], -1)
        inside = ok & (addrs < self.hi[np.clip(cand, 0, None)])
        return np.where(inside, cand, -1)


def _extent(t) -> tuple[int, int]:
    """[lo, hi) byte addresses a strided tensor view can touch."""
    es = t.element_size()
    lo = hi = 0
    for size, stride in zip(t.shape, t.stride()):
        if size == 0:
            return t.data_ptr(), t.data_ptr()
        span = (size - 1) * stride
        lo, hi = lo + min(span, 0), hi + max(span, 0)
    return t.data_ptr() + lo * es, t.data_ptr() + hi * es + es


def _tensor_args(fn, args, kwargs) -> tuple[list[str], list[int], list[int]]:
    try:
        sig = inspect.signature(fn)
        kwargs = {k: v for k, v in kwargs.items() if k in sig.parameters}
        bound = sig.bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    names, lo, hi = [], [], []
    for name, value in bound.items():
        base = getattr(value, "base", value) if type(value).__name__ == "TensorDescriptor" else value
        if hasattr(base, "data_ptr") and hasattr(base, "stride"):
            a, b = _extent(base)
            if b > a:
                names.append(name)
                lo.append(a)
                hi.append(b)
    return names, lo, hi


def _strata(total: int, samples: int | None, seed: int) -> dict[int, int] | None:
    """{linear program id: weight} for a stratified sample, or None to run every program."""
    if not samples or total <= samples:
        return None
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, total, samples + 1).round().astype(np.int64)
    return {int(rng.integers(a, b)): int(b - a) for a, b in zip(edges[:-1], edges[1:]) if b > a}


def _sampling_wrapper(fn, builder, ctx, max_programs, seed):
    """``fn`` (the interpreter's rewritten kernel) that counts every program it runs, and runs only sampled ones
    when ``max_programs`` is set. Keeps ``fn``'s signature and globals (the interpreter inspects both)."""
    strata = _strata
    state: dict = {}

    def body(*args, **kwargs):
        gx, gy, gz = builder.grid_dim
        x, y, z = builder.grid_idx
        if "chosen" not in state:
            state["chosen"] = strata(int(gx) * int(gy) * int(gz), max_programs, seed)
        chosen = state["chosen"]
        if chosen is not None:
            weight = chosen.get((int(x) * int(gy) + int(y)) * int(gz) + int(z))
            if weight is None:
                return None
            ctx.weight = weight
        ctx.launch.executed += 1
        return fn(*args, **kwargs)

    wrapper = types.FunctionType(body.__code__, fn.__globals__, fn.__name__, body.__defaults__, body.__closure__)
    functools.update_wrapper(wrapper, fn)
    wrapper.__signature__ = inspect.signature(fn)
    del wrapper.__wrapped__
    return wrapper


def _elem_bytes(tt_dtype) -> int:
    return max(int(tt_dtype.primitive_bitwidth), 8) // 8


def interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run our kernels at all, or None. triton < 3.7 turns a scalar kernel
    argument into a 1-element array and calls ``int()`` on it (``range(n)`` in a kernel), which numpy >= 2.4
    refuses ("only 0-dimensional arrays can be converted to Python scalars")."""
    import triton  # deferred: the report (and --help) loads without torch or triton

    def version(v):
        return tuple(int(p) for p in v.split("+")[0].split(".")[:2] if p.isdigit())

    if version(triton.__version__) < (3, 7) and version(np.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter cannot run kernels with numpy {np.__version__} "
                "(it needs numpy < 2.4)")
    return None


class CountingUnavailable(RuntimeError):
    """The installed Triton's interpreter lacks what the counting hooks patch (raised before anything changes)."""


# interpreter builder methods every load, store and atomic ends in -> what they count as. Parameters are found by
# name (``ptrs``/``ptr``, ``mask``), because their order and the rest differ between triton versions (3.6/3.7 take
# ``cache_modifier, eviction_policy``, 3.9 ``cache_policy``; ``create_atomic_load/store`` exist from 3.9 on).
_HOOKS = {"create_masked_load": "load", "create_masked_store": "store", "create_atomic_rmw": "atomic",
          "create_atomic_cas": "atomic", "create_atomic_load": "load", "create_atomic_store": "store"}
_REQUIRED = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas", "set_grid_dim")


def _parameters(fn) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _patch_targets(interp):
    """(InterpreterBuilder, GridExecutor) of this triton, or ``CountingUnavailable`` saying what is missing."""
    import triton  # deferred: the report (and --help) loads without torch or triton

    version = f"triton {getattr(triton, '__version__', '?')}"
    builder, executor = getattr(interp, "InterpreterBuilder", None), getattr(interp, "GridExecutor", None)
    if builder is None or executor is None or not hasattr(interp, "interpreter_builder"):
        raise CountingUnavailable(f"{version}: the interpreter has no InterpreterBuilder/GridExecutor")
    missing = [n for n in _REQUIRED if not callable(getattr(builder, n, None))]
    if missing:
        raise CountingUnavailable(f"{version}: the interpreter has no {', '.join(missing)}")
    for name in _HOOKS:
        params = _parameters(getattr(builder, name, None)) if hasattr(builder, name) else ["ptr"]
        if not {"ptr", "ptrs"} & set(params):
            raise CountingUnavailable(f"{version}: InterpreterBuilder.{name}({', '.join(params)}) has no pointer "
                                      "parameter")
    return builder, executor


def _hook(counter: "TrafficCounter", name: str, original):
    """``original`` (an interpreter builder method) that first records its enabled lanes. A hook that cannot read
    its arguments stops counting (``counter.failure``) and never changes what the kernel does."""
    kind, params = _HOOKS[name], _parameters(original)
    ptr_name = "ptrs" if "ptrs" in params else "ptr"
    ptr_at = params.index(ptr_name)
    mask_at = params.index("mask") if "mask" in params else None

    @functools.wraps(original)
    def hooked(*args, **kwargs):
        if counter.failure is None:
            try:
                ptr = args[ptr_at] if ptr_at < len(args) else kwargs[ptr_name]
                mask = None if mask_at is None else (args[mask_at] if mask_at < len(args) else kwargs.get("mask"))
                counter._record(kind, ptr.data, None if mask is None else mask.data,
                                _elem_bytes(ptr.get_element_ty()))
            except Exception as exc:  # an interpreter type we cannot read: say so, keep the kernel running
                counter.failure = f"{name}: {type(exc).__name__}: {exc}"[:300]
        return original(*args, **kwargs)

    return hooked


@contextlib.contextmanager
def count_traffic(unique: bool = False, max_programs: int | None = None, seed: int = 0):
    """Count loads, stores, atomics and programs of every interpreted Triton launch in the block.

    ``max_programs``: a launch with more programs runs only a stratified sample of that many (its programs, in
    launch order, cut into ``max_programs`` equal strata, one seeded-random program run per stratum), and each
    sampled program's bytes count for its whole stratum: an unbiased estimate of the launch's traffic at a
    fraction of the interpreter time, for full-size shapes. Byte counts only depend on addresses and masks, so
    the inputs may be stride-0 expansions (no memory); outputs of skipped programs stay unwritten. Launches
    with at most ``max_programs`` programs run completely (host code that reads their results still works).

    Yields a ``TrafficCounter`` (check its ``failure``). Raises ``CountingUnavailable`` (nothing patched) on a
    Triton it cannot patch. Nested or concurrent counting is refused (one set of patches at a time).
    """
    if unique and max_programs:
        raise ValueError("unique: footprints need every program; not available with max_programs")

    if not runtime.interpreter_enabled():
        raise RuntimeError("count_traffic needs the Triton interpreter (TRITON_INTERPRET=1); on a GPU, measure "
                           "traffic with Nsight Compute instead")
    from triton.runtime import interpreter as interp  # deferred: the report (and --help) loads without torch or triton

    if _active:
        raise RuntimeError("count_traffic: already counting (nested count_traffic blocks are not supported)")
    builder_cls, executor_cls = _patch_targets(interp)
    originals = {name: getattr(builder_cls, name) for name in _HOOKS if hasattr(builder_cls, name)}
    originals["set_grid_dim"] = builder_cls.set_grid_dim
    original_call = executor_cls.__call__
    counter = TrafficCounter(unique=unique)
    patches = {name: _hook(counter, name, originals[name]) for name in _HOOKS if name in originals}

    def set_grid_dim(self, *grid):
        if counter._ctx is not None:
            counter._ctx.launch.grid = tuple(int(g) for g in grid)
        return originals["set_grid_dim"](self, *grid)

    def call(self, *args, **kwargs):
        names, lo, hi = _tensor_args(self.fn, args, kwargs)
        launch = Launch(getattr(self.fn, "__name__", "kernel"), (), arguments=dict(zip(names, zip(lo, hi))))
        previous = counter._ctx
        ctx = counter._ctx = _LaunchContext(launch, names, lo, hi)
        counter.launches.append(launch)
        original_fn = self.fn
        self.fn = _sampling_wrapper(original_fn, interp.interpreter_builder, ctx, max_programs, seed)
        try:
            return original_call(self, *args, **kwargs)
        finally:
            self.fn = original_fn
            counter._ctx = previous

    patches["set_grid_dim"] = set_grid_dim
    with _lock:
        if _active:
            raise RuntimeError("count_traffic: already counting (nested count_traffic blocks are not supported)")
        _active.append(counter)
    try:
        for name, fn in patches.items():
            setattr(builder_cls, name, fn)
        executor_cls.__call__ = call
        yield counter
    finally:
        for name, fn in originals.items():
            setattr(builder_cls, name, fn)
        executor_cls.__call__ = original_call
        with _lock:
            _active.remove(counter)


@contextlib.contextmanager
def zero_filled_allocations():
    """While counting at full size: every fresh ``torch.empty``/``empty_like`` allocation (the inputs, the
    launcher's workspaces) is zero-filled, so what a kernel reads from memory no sampled program wrote is the
    same on every run (deterministic counts for asv) and reads as a valid value (a split-KV partial with LSE 0,
    not an empty one), as in a full run. Scoped: restored on exit, also on an exception; counting runs in one
    thread (the interpreter executes programs sequentially)."""
    import torch  # deferred: the report (and --help) loads without torch or triton

    empty, empty_like = torch.empty, torch.empty_like
    torch.empty, torch.empty_like = torch.zeros, torch.zeros_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


@contextlib.contextmanager
def launches_only():
    """Record every interpreted launch's grid WITHOUT running the kernel body (outputs stay unwritten).

    For program counts at full model size (e.g. a split-KV decode of one 32k sequence), where executing the
    interpreter would take hours. Host code between launches still runs; anything it reads from a kernel's
    output is garbage, so use this only for counting programs. Yields a ``TrafficCounter`` whose launches
    carry grids and no bytes.
    """
    if not runtime.interpreter_enabled():
        raise RuntimeError("launches_only needs the Triton interpreter (TRITON_INTERPRET=1)")

    from triton.runtime import interpreter as interp  # deferred: the report (and --help) loads without torch or triton

    counter = TrafficCounter()
    with _lock:
        if _active:
            raise RuntimeError("launches_only: already counting")
        _active.append(counter)
    executor_cls = interp.GridExecutor
    original_call = executor_cls.__call__

    def call(self, *args, **kwargs):
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
        bound = inspect.getcallargs(self.fn, *args, **kwargs)
        grid = self.grid(bound) if callable(self.grid) else self.grid
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        counter.launches.append(Launch(getattr(self.fn, "__name__", "kernel"), grid))

    try:
        executor_cls.__call__ = call
        yield counter
    finally:
        executor_cls.__call__ = original_call
        with _lock:
            _active.remove(counter)
