"""GPU timing harness: one policy for every provider, so numbers compare.

Policy (``TimingPolicy``), applied identically to the kernel under test and every baseline provider:
- warmup calls first (Triton compilation, autotuning and cuBLAS heuristics happen here, untimed);
- each timed call is bracketed by its own pair of CUDA events, so per-call samples give a median with
  p20/p80 (not a mean that one hiccup drags);
- cold L2 by default: before every timed call a buffer of at least twice the GPU's L2 is overwritten (that
  write is outside the events), so no input can still sit in L2 from the previous call. The flush size comes
  from the detected GPU spec, or the device's reported L2 size, whichever is larger; never less than 2x L2;
- CUDA graphs on or off for all providers alike (``cuda_graphs=True`` captures each provider's call once and
  replays it; the L2 flush stays outside the graph);
- after timing, the output of the LAST timed call is re-checked (``check(output)``), so a provider that only
  gets the right answer on its first call, or corrupts state when repeated, fails instead of reporting a time.

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
import statistics
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

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Provider:
    op: str
    name: str
    fn: Callable
    setup: Callable | None = None
    postprocess: Callable | None = None


_PROVIDERS: dict[str, dict[str, Provider]] = {}
_BUILTIN_LOADED = False


def register_provider(op: str, name: str, fn: Callable, *, setup: Callable | None = None,
                      postprocess: Callable | None = None, replace: bool = False) -> Provider:
    """Add a provider for ``op``; timed by ``measure_provider`` under exactly the same policy as the others."""
    if not callable(fn):
        raise ValueError(f"fn: provider {op}/{name} must be callable")
    table = _PROVIDERS.setdefault(op, {})
    if name in table and not replace:
        raise ValueError(f"name: provider {name!r} is already registered for {op!r} (pass replace=True)")
    table[name] = Provider(op, name, fn, setup, postprocess)
    return table[name]


def _servekernels_provider(op: str) -> Callable:
    def call(*args, **kwargs):
        from kernels.impls import load

        return load("servekernels").op(op)(*args, **kwargs)

    call.__name__ = f"servekernels_{op}"
    return call


def _load_builtin() -> None:
    """Every registry op (``kernels.ops``) gets the "servekernels" provider."""
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    from kernels.ops import registry

    for op in registry():
        _PROVIDERS.setdefault(op, {}).setdefault("servekernels", Provider(op, "servekernels",
                                                                          _servekernels_provider(op)))


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


def measure_provider(op: str, name: str, args: tuple, kwargs: dict | None = None, *,
                     policy: TimingPolicy = DEFAULT_POLICY, check: Callable[[Any], None] | None = None) -> Timing:
    """Time one registered provider of ``op`` on ``(args, kwargs)``; see the module docstring."""
    table = providers(op)
    if name not in table:
        raise ValueError(f"name: no provider {name!r} for {op!r}; registered: {sorted(table)}")
    p = table[name]
    kwargs = kwargs or {}
    if p.setup is not None:
        state = p.setup(*args, **kwargs)
        fn = lambda: p.fn(state)  # noqa: E731
    else:
        fn = lambda: p.fn(*args, **kwargs)  # noqa: E731
    post = p.postprocess
    return measure(fn, op=op, provider=name, policy=policy,
                   check=None if check is None else (lambda out: check(post(out) if post else out)))


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
