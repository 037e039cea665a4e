"""GPU timing harness: one policy for every provider, so numbers compare.

Policy (``TimingPolicy``), applied identically to the kernel under test and every baseline provider:
- warmup calls first (Triton compilation, autotuning and cuBLAS heuristics happen here, untimed);
- each timed call is bracketed by its own pair of CUDA events, so per-call samples give a median with
  p20/p80 (not a mean that one hiccup drags);
- cold L2 by default: before every timed call a buffer of at least twice the GPU's L2 is overwritten (that
  write is outside the events), so no input can still sit in L2 from the previous call. The flush size comes
  from the detected GPU spec, or the device's reported L2 size, whichever is larger; never less than 2x L2;
- CUDA graphs on or off for all providers alike (``cuda_graphs=True``, ``servekernels report --graphs``:
  captures each provider's timed call once and replays it; the L2 flush stays outside the graph);
- after timing, the output of the LAST timed call is re-checked (``check(output)``), so a provider that only
  gets the right answer on its first call, or corrupts state when repeated, fails instead of reporting a time.

What is timed is the kernels' launch sequence, never host checks (``timed_call``, decided once, untimed):
- "servekernels": setup resolves the kernel once and computes the op's host hints (``OpSpec.hints``:
  ``max_seq_len``, ``max_query_len``); the timed call is ``kernel(*args, **kwargs, **hints, validate=False)``,
  which reads no device value on the host (``correctness/test_timed_path.py``) and so also captures in a graph.
- a peer with a registered provider (``--impl vllm`` -> "vllm_triton", ``perf/peer_providers.py``): its setup
  (layout conversion, metadata, workspaces) untimed, its launch timed.
- any other implementation (a user module, torch, reference): its function itself, with ``validate=False``
  and the hints only where its signature names those keywords (decided once), else the plain call.
``Timing.timed_path`` says which of these ran ("validate=False + hints", "peer setup (untimed) + launch",
"plain call", ...). Host overhead is measured apart (``host_times``): the median host wall time of one
validated call and of one timed-path call, each after a synchronize, the call's own syncs included.

Providers: ``register_provider(op, name, fn, setup=None)``. Without ``setup`` the provider is called as
``fn(*args, **kwargs)`` with the op's public signature (``CONTRACT.md``) and returns its output in the
contract's layout. With ``setup``, ``state = setup(*args, **kwargs)`` runs once untimed (convert layouts,
allocate workspaces) and ``fn(state)`` is what gets timed; its output is passed through ``postprocess`` (if
given, untimed) before the check. The "servekernels" provider (``kernels.triton.<op>``) is built in; baselines
(vLLM's kernels, torch SDPA) register themselves from ``perf/peer_providers.py`` (``load_peer_providers()``).

Without a GPU, ``measure`` raises ``GpuUnavailable`` (callers turn it into a skip, never a fake number).
"""
from __future__ import annotations

import importlib
import inspect
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


class GpuUnavailable(RuntimeError):
    """Raised by the timing harness where there is no CUDA GPU (or the interpreter is on)."""


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 10
    reps: int = 50
    cold_l2: bool = True
    cuda_graphs: bool = False
    flush_factor: float = 2.0  # flush buffer = flush_factor * L2 bytes, at least 2

    def __post_init__(self):
        if self.warmup < 1 or self.reps < 3:
            raise ValueError("policy: need warmup >= 1 and reps >= 3 (median and p20/p80 of one sample are noise)")
        if self.flush_factor < 2.0:
            raise ValueError("policy.flush_factor: a cold-L2 flush needs at least twice the L2 size")


DEFAULT_POLICY = TimingPolicy()
QUICK_POLICY = TimingPolicy(warmup=3, reps=10)


@dataclass
class Timing:
    op: str
    provider: str
    median_us: float
    p20_us: float
    p80_us: float
    samples: int
    policy: dict = field(default_factory=dict)
    device: str = ""
    checked: bool = False
    timed_path: str = ""  # what the events bracketed (see the module docstring)
    hints: dict = field(default_factory=dict)  # host hints passed to the timed call
    host_validated_us: float | None = None  # median host wall time of one validated call (None: not measured)
    host_launch_us: float | None = None  # the same for one call of the timed path

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Provider:
    op: str
    name: str
    fn: Callable
    setup: Callable | None = None
    postprocess: Callable | None = None
    timed_path: str = ""  # "" : derived (a setup that returns a LaunchState says its own)


_PROVIDERS: dict[str, dict[str, Provider]] = {}
_BUILTIN_LOADED = False


def register_provider(op: str, name: str, fn: Callable, *, setup: Callable | None = None,
                      postprocess: Callable | None = None, replace: bool = False, timed_path: str = "") -> Provider:
    """Add a provider for ``op``; timed by ``measure_provider`` under exactly the same policy as the others."""
    if not callable(fn):
        raise ValueError(f"fn: provider {op}/{name} must be callable")
    table = _PROVIDERS.setdefault(op, {})
    if name in table and not replace:
        raise ValueError(f"name: provider {name!r} is already registered for {op!r} (pass replace=True)")
    table[name] = Provider(op, name, fn, setup, postprocess, timed_path)
    return table[name]


PLAIN = "plain call"
PEER = "peer setup (untimed) + launch"
LAUNCH = "validate=False + hints"
VALIDATE_FALSE = "validate=False"
# an --impl whose timing goes through a registered peer provider (its setup untimed) when it has one for the op
PEER_OF = {"vllm": "vllm_triton"}


@dataclass
class LaunchState:
    """A function's timed call, decided once before timing: ``fn(*args, **kwargs)`` where ``kwargs`` holds
    ``validate=False`` and the op's hints where ``fn`` takes them."""

    fn: Callable
    args: tuple
    kwargs: dict
    hints: dict
    path: str

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)


def accepted_keywords(fn: Callable) -> set[str]:
    """The keyword names ``fn``'s signature names (through ``functools.wraps``); ``**kwargs`` names none: a
    keyword is passed only to a function that says it takes it."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def launch_state(op: str, fn: Callable, args: tuple, kwargs: dict) -> LaunchState:
    """Untimed: ``validate=False`` and the op's host hints (``OpSpec.hints``, computed here) for ``fn``, each only
    where its signature takes it; ``path`` names what the timed call is."""
    from kernels.ops import registry

    spec = registry().get(op)
    keywords = accepted_keywords(fn)
    extra = {}
    if "validate" in keywords and "validate" not in kwargs:
        extra["validate"] = False
    hints = {k: v for k, v in (spec.hints(args, kwargs) if spec else {}).items() if k in keywords}
    path = (" + ".join(p for p, on in ((VALIDATE_FALSE, "validate" in extra), ("hints", bool(hints))) if on)
            or PLAIN)
    return LaunchState(fn, tuple(args), {**kwargs, **hints, **extra}, hints, path)


def _run_state(state: LaunchState):
    return state()


def _servekernels_setup(op: str) -> Callable:
    def setup(*args, **kwargs):
        from kernels.impls import load

        return launch_state(op, load("servekernels").op(op), args, kwargs)  # resolved once, here

    setup.__name__ = f"servekernels_{op}_setup"
    return setup


def _servekernels_provider(op: str) -> Provider:
    return Provider(op, "servekernels", _run_state, _servekernels_setup(op))


def timed_provider(op: str, impl: str, fn: Callable | None = None) -> str:
    """The harness provider that times implementation ``impl`` of ``op`` (decided once, untimed):
    "servekernels" for ours; the peer provider of ``PEER_OF`` where one is registered for ``op``; else ``fn``
    (the implementation's function, without any per-call guard) registered under ``impl`` with a
    ``launch_state`` setup (``validate=False`` and the hints where its signature takes them)."""
    if impl == "servekernels":
        return impl
    peer = PEER_OF.get(impl)
    if peer:
        load_peer_providers()
        if peer in providers(op):
            return peer
    if fn is None:
        from kernels.impls import load

        fn = load(impl).op(op)
    raw = getattr(fn, "__wrapped__", fn)  # the guard's feature check is host work: decided before timing
    register_provider(op, impl, _run_state, setup=lambda *a, **k: launch_state(op, raw, a, k), replace=True)
    _IMPLS.add((op, impl))
    return impl


_IMPLS: set[tuple[str, str]] = set()  # (op, name) registered by timed_provider for an --impl, not a baseline


def baselines(op: str) -> list[str]:
    """The providers of ``op`` a servekernels row is compared with: every registered one but ours and those
    ``timed_provider`` registered for another ``--impl`` (which has its own rows)."""
    return [n for n in providers(op) if n != "servekernels" and (op, n) not in _IMPLS]


@dataclass
class TimedCall:
    """What ``measure`` times for one provider: ``fn()``; ``path``/``hints`` say what it is."""

    fn: Callable[[], Any]
    path: str
    hints: dict
    postprocess: Callable | None
    state: Any = None  # what setup returned (None without one)


def timed_call(op: str, name: str, args: tuple, kwargs: dict | None = None) -> TimedCall:
    """Run provider ``name``'s setup (untimed) and return the call to time; no GPU needed."""
    table = providers(op)
    if name not in table:
        raise ValueError(f"name: no provider {name!r} for {op!r}; registered: {sorted(table)}")
    p = table[name]
    kwargs = kwargs or {}
    if p.setup is None:
        return TimedCall(lambda: p.fn(*args, **kwargs), p.timed_path or PLAIN, {}, p.postprocess)
    state = p.setup(*args, **kwargs)
    if isinstance(state, LaunchState):
        return TimedCall(lambda: p.fn(state), p.timed_path or state.path, dict(state.hints), p.postprocess, state)
    return TimedCall(lambda: p.fn(state), p.timed_path or PEER, {}, p.postprocess, state)


def _load_builtin() -> None:
    """Every registry op (``kernels.ops``) gets the "servekernels" provider."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    from kernels.ops import registry

    for op in registry():
        _PROVIDERS.setdefault(op, {}).setdefault("servekernels", _servekernels_provider(op))


_PEERS: dict[str, str | None] = {}


def load_peer_providers() -> str | None:
    """Register the baselines of ``perf.peer_providers`` (once). Returns why vLLM's are missing, or None."""
    if "why" not in _PEERS:
        try:
            peers = importlib.import_module("perf.peer_providers")
        except ImportError as exc:  # a peer library it needs is missing here
            _PEERS["why"] = f"peer providers not loaded: {exc}"
        else:
            _PEERS["why"] = peers.register(register_provider)
    return _PEERS["why"]


def providers(op: str) -> dict[str, Provider]:
    _load_builtin()
    return dict(_PROVIDERS.get(op, {}))


def quantiles(samples_ms: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80) in the samples' unit, linear interpolation between order statistics."""
    if not samples_ms:
        raise ValueError("samples: nothing was timed")
    xs = sorted(samples_ms)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
    return statistics.median(xs), q[1], q[7]


def require_gpu() -> None:
    from kernels.runtime import cuda_available, interpreter_enabled

    if interpreter_enabled() or not cuda_available():
        raise GpuUnavailable("no CUDA GPU here (Triton interpreter on): device timing needs a GPU")


def _l2_bytes() -> int:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    reported = int(getattr(props, "L2_cache_size", 0) or 0)
    from roofline.specs import detect_spec

    spec = detect_spec()
    return max(reported, spec.l2_bytes if spec else 0, 64 * 2**20 if not reported and not spec else 0)


def measure(fn: Callable[[], Any], *, op: str = "", provider: str = "", policy: TimingPolicy = DEFAULT_POLICY,
            check: Callable[[Any], None] | None = None) -> Timing:
    """Time ``fn()`` on the GPU under ``policy``; ``check(last_output)`` runs after timing (raise to fail)."""
    require_gpu()
    import torch

    from kernels.nvtx import nvtx_range

    flush = None
    if policy.cold_l2:
        flush = torch.empty(int(policy.flush_factor * _l2_bytes()), dtype=torch.int8, device="cuda")
    with nvtx_range(f"warmup:{op}:{provider}", "bench"):
        out = None
        for _ in range(policy.warmup):
            out = fn()
    torch.cuda.synchronize()
    timed = fn
    if policy.cuda_graphs:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # one more warmup on the capture stream (allocator state)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            captured = fn()

        def timed():
            graph.replay()
            return captured
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(policy.reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(policy.reps)]
    with nvtx_range(f"timed:{op}:{provider}", "bench"):
        for i in range(policy.reps):
            if flush is not None:
                flush.random_(0, 127) if i == 0 else flush.add_(1)  # write every byte: evicts L2
            starts[i].record()
            out = timed()
            ends[i].record()
    torch.cuda.synchronize()
    samples_ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    med, p20, p80 = quantiles(samples_ms)
    if check is not None:
        check(out)
    return Timing(op, provider, med * 1e3, p20 * 1e3, p80 * 1e3, len(samples_ms), asdict(policy),
                  torch.cuda.get_device_name(), check is not None)


def host_times(validated: Callable[[], Any] | None, launch: Callable[[], Any], reps: int = 20) -> tuple:
    """``(host_validated_us, host_launch_us)``: the median host wall time of one call of each (a synchronize
    before every call, so no queued work is counted; the call's own syncs, e.g. a validated call's copies of
    metadata to the host, are). GPU only; ``validated`` None gives None for it."""
    require_gpu()
    import torch

    def median_us(fn):
        fn()
        xs = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        return statistics.median(xs) * 1e6

    return (None if validated is None else median_us(validated)), median_us(launch)


def measure_provider(op: str, name: str, args: tuple, kwargs: dict | None = None, *,
                     policy: TimingPolicy = DEFAULT_POLICY, check: Callable[[Any], None] | None = None,
                     validated: Callable[[], Any] | None = None) -> Timing:
    """Time one registered provider of ``op`` on ``(args, kwargs)``; see the module docstring. ``validated``
    (a validated call of the same implementation): also measure host overhead (``host_times``) after timing."""
    require_gpu()
    call = timed_call(op, name, args, kwargs)
    post = call.postprocess
    timing = measure(call.fn, op=op, provider=name, policy=policy,
                     check=None if check is None else (lambda out: check(post(out) if post else out)))
    timing.timed_path, timing.hints = call.path, call.hints
    if validated is not None:
        timing.host_validated_us, timing.host_launch_us = host_times(validated, call.fn)
    return timing


def measure_impl(op: str, impl: str, fn: Callable, args: tuple, kwargs: dict | None = None, *,
                 policy: TimingPolicy = DEFAULT_POLICY, check: Callable[[Any], None] | None = None) -> Timing:
    """Implementation ``impl`` of ``op`` (``fn``: its function from ``kernels.impls.load(impl).op(op)``) through
    its timed path (``timed_provider``), with the host overhead of one validated call (``fn`` itself, unguarded)
    and of one timed-path call. The one timed path of the report (``measure_case``) and pytest-benchmark."""
    require_gpu()
    name = timed_provider(op, impl, fn)
    raw = getattr(fn, "__wrapped__", fn)
    kwargs = kwargs or {}
    timing = measure_provider(op, name, args, kwargs, policy=policy, check=check,
                              validated=lambda: raw(*args, **kwargs))
    if name != impl:
        timing.timed_path += f" ({name})"
    return timing


def compare_providers(op: str, args: tuple, kwargs: dict | None = None, *, policy: TimingPolicy = DEFAULT_POLICY,
                      check: Callable[[Any], None] | None = None, names=None) -> dict[str, Timing | str]:
    """Every provider of ``op`` on the same inputs under the same policy; a provider that fails its check or
    raises is reported by its error message instead of a time."""
    out: dict[str, Timing | str] = {}
    for name in names or providers(op):
        try:
            out[name] = measure_provider(op, name, args, kwargs, policy=policy, check=check)
        except GpuUnavailable:
            raise
        except Exception as exc:  # a baseline that cannot run this case: say why, keep the others
            out[name] = f"{type(exc).__name__}: {exc}"
    return out
