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
- fresh inputs: the timed calls alternate between input sets of the same structure in different storage with
  different values (``measure_provider(..., fresh=...)``: the report passes ``integrity.fresh_copy``), so a
  cache keyed on pointers, shapes or a cheap fingerprint answers stale;
- after timing, the output of the LAST timed call is re-checked, and so is the output of one iteration inside
  the timed loop drawn from ``os.urandom`` (never from the printed seed: no implementation can predict it),
  each against its own input set's reference (``check``: one per set); a provider that only gets the right
  answer on its first calls, or corrupts state when repeated, fails (``integrity.Breach``) instead of reporting
  a time.

The loop itself is ``timed_loop(calls, policy, device, checks)``: a ``CudaDevice`` here (events, synchronize,
the L2 flush), a ``RecordingDevice`` (a fake clock that logs every step) where there is no GPU, so the loop's
rules are tested on this CPU (``correctness/test_cheats.py``); ``guarded_measure`` runs an implementation through
it with the integrity guard, as ``python -m correctness.cheats`` does.

What is timed is the kernels' launch sequence, never host checks. Every implementation is a provider
(``kernels.impls.Provider``), resolved once where its name came in, and it knows how to be timed
(``Provider.timed``, decided once, untimed; ``timed_call`` here):
- an op the provider has a timing setup for (``Provider.timers``: vLLM's per-op files
  ``kernels/impls/vllm/<op>.py``, the ``torch_sdpa`` baseline ``kernels/impls/torch_sdpa.py``): that setup
  (layout conversion, metadata, workspaces) untimed, the ``Launch`` it returns timed, its ``postprocess``
  (untimed) giving the check the contract's layout;
- any other (ours, torch, reference, a user module): its function itself with ``validate=False`` and the op's
  host hints (``OpSpec.hints``: ``max_seq_len``, ``max_query_len``) only where its provider declares them
  (``Provider.extras``: ours does, a plain user module declares none) and its signature names them, else the
  plain call. Ours then reads no device value on the host (``correctness/test_timed_path.py``) and so also
  captures in a graph.
``Timing.timed_path`` says which of these ran ("validate=False + hints", "peer setup (untimed) + launch",
"plain call", ...). Host overhead is measured apart (``host_times``): the median host wall time of one
validated call and of one timed-path call, each after a synchronize, the call's own syncs included.

``measure_impl(op, provider, ...)`` times one implementation (the report's rows, pytest-benchmark);
``compare_providers(op, providers, ...)`` times several on the same inputs (the report times the built-in
baselines, ``kernels.impls.baselines(op)``, beside ours).

Without a GPU, ``measure`` raises ``GpuUnavailable`` (callers turn it into a skip, never a fake number).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from kernels import runtime  # its functions are looked up at each call (tests patch them)
from kernels.nvtx import nvtx_range
from kernels.testing.integrity import Breach, fresh_copy, guard
from kernels.testing.judge import judge
from roofline.specs import detect_spec


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


@dataclass
class TimedCall:
    """What ``measure`` times for one provider on one input set: ``fn()`` (``kernels.impls.Launch``, decided once
    by the provider, untimed); ``path``/``hints`` say what it is."""
    fn: Callable[[], Any]
    path: str
    hints: dict
    postprocess: Callable | None
    state: Any = None  # what the setup prepared


def timed_call(op: str, provider, args: tuple, kwargs: dict | None = None) -> TimedCall:
    """Provider ``provider``'s (a ``kernels.impls.Provider``) timed call of ``op`` (``Provider.timed``: its
    timing setup, untimed); no GPU needed."""
    launch = provider.timed(op, args, kwargs or {})
    return TimedCall(launch.fn, launch.path, dict(launch.hints), launch.postprocess, launch.state)


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
    if runtime.interpreter_enabled() or not runtime.cuda_available():
        raise GpuUnavailable("no CUDA GPU here (Triton interpreter on): device timing needs a GPU")


def _l2_bytes() -> int:
    import torch  # deferred: the report imports this module; --help loads no torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    reported = int(getattr(props, "L2_cache_size", 0) or 0)

    spec = detect_spec()
    return max(reported, spec.l2_bytes if spec else 0, 64 * 2**20 if not reported and not spec else 0)


class CudaDevice:
    """The GPU side of ``timed_loop``: CUDA events, synchronize, the cold-L2 flush, CUDA-graph capture."""
    def __init__(self, policy: TimingPolicy):
        import torch  # deferred: the report imports this module; --help loads no torch

        self.torch = torch
        self.flush_buf = None
        if policy.cold_l2:
            self.flush_buf = torch.empty(int(policy.flush_factor * _l2_bytes()), dtype=torch.int8, device="cuda")

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def flush(self, i: int) -> None:
        if self.flush_buf is not None:
            self.flush_buf.random_(0, 127) if i == 0 else self.flush_buf.add_(1)  # write every byte: evicts L2

    def keep(self, out):
        """A copy of ``out`` enqueued after the iteration's end event (untimed), judged after the loop."""
        return _tree(out, lambda t: t.clone())

    def graph(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # one more warmup on the capture stream (allocator state)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            captured = fn()

        def replay():
            graph.replay()
            return captured

        return replay

    def name(self) -> str:
        return self.torch.cuda.get_device_name()


class RecordingDevice:
    """``timed_loop``'s device where there is no GPU: each event reads a fake clock that advances ``step_ms`` per
    call made, and ``log`` records every step in order ("warmup 0", "flush 3", "call 3 set 1", "keep 3"...)."""
    def __init__(self, step_ms: float = 1.0):
        self.clock, self.step_ms, self.log = 0.0, step_ms, []

    def event(self):
        device = self

        class Event:
            def record(self):
                self.at = device.clock

            def elapsed_time(self, end):
                return end.at - self.at

        return Event()

    def synchronize(self) -> None:
        self.log.append("synchronize")

    def flush(self, i: int) -> None:
        self.log.append(f"flush {i}")

    def keep(self, out):
        self.log.append("keep")
        return _tree(out, lambda t: t.clone())

    def graph(self, fn):
        return fn

    def tick(self, what: str) -> None:
        self.clock += self.step_ms
        self.log.append(what)

    def name(self) -> str:
        return "recording device (fake clock)"


def _tree(out, fn):
    if isinstance(out, dict):
        return {k: _tree(v, fn) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_tree(v, fn) for v in out)
    return fn(out) if hasattr(out, "clone") else out


def recheck_iteration(reps: int) -> int:
    """The timed iteration whose output is judged besides the last: from ``os.urandom``, never the run seed."""
    return int.from_bytes(os.urandom(4), "little") % reps


def timed_loop(calls: list[Callable[[], Any]], policy: TimingPolicy, device, checks=None,
               recheck_at: int | None = None) -> list[float]:
    """Warm up, then time ``policy.reps`` calls, call i on input set ``i % len(calls)`` (each call bracketed by
    its own events, the flush outside them); then judge the output of iteration ``recheck_at`` (default
    ``recheck_iteration``) and of the last, each with its set's check (``checks[j](out)``, raising
    ``AssertionError`` to fail). Returns the per-call samples in ms; a failed check raises ``integrity.Breach``."""
    n = len(calls)
    tick = getattr(device, "tick", None)
    for i in range(policy.warmup):
        calls[i % n]()
        if tick:
            tick(f"warmup {i} set {i % n}")
    device.synchronize()
    timed = [device.graph(c) for c in calls] if policy.cuda_graphs else list(calls)
    k = recheck_iteration(policy.reps) if recheck_at is None else recheck_at
    starts = [device.event() for _ in range(policy.reps)]
    ends = [device.event() for _ in range(policy.reps)]
    kept = out = None
    for i in range(policy.reps):
        device.flush(i)
        starts[i].record()
        out = timed[i % n]()
        if tick:
            tick(f"call {i} set {i % n}")
        ends[i].record()
        if i == k:
            kept = device.keep(out)
    device.synchronize()
    samples_ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    if checks:
        for what, value, j, at in (("re-check inside the timed loop", kept, k % n, k),
                                   ("re-check after timing", out, (policy.reps - 1) % n, policy.reps - 1)):
            try:
                checks[j](value)
            except AssertionError as exc:
                raise Breach(what, f"the output of timed call {at} of {policy.reps} (input set {j}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return samples_ms


def measure(fn: Callable[[], Any] | list, *, op: str = "", provider: str = "", policy: TimingPolicy = DEFAULT_POLICY,
            check: Callable[[Any], None] | list | None = None) -> Timing:
    """Time ``fn()`` on the GPU under ``policy`` (``timed_loop``); ``fn`` and ``check`` may be lists, one per
    input set. ``check(output)`` (raise to fail) judges the last call's output and one drawn iteration's."""
    require_gpu()

    calls = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    checks = None if check is None else (list(check) if isinstance(check, (list, tuple)) else [check] * len(calls))
    device = CudaDevice(policy)
    with nvtx_range(f"timed:{op}:{provider}", "bench"):
        samples_ms = timed_loop(calls, policy, device, checks)
    med, p20, p80 = quantiles(samples_ms)
    return Timing(op, provider, med * 1e3, p20 * 1e3, p80 * 1e3, len(samples_ms), asdict(policy),
                  device.name(), check is not None)


def guarded_measure(spec, fn: Callable, shape: dict, seed: int, policy: TimingPolicy, device=None) -> list[float]:
    """An implementation's ``fn`` of op ``spec`` through ``timed_loop`` with the integrity guard, on inputs
    built from ``shape`` and ``seed`` and a fresh set (``integrity.fresh_copy``), each judged against its own
    reference. ``device``: a ``RecordingDevice`` on this CPU (default: the GPU). Returns the samples in ms."""
    sets = [spec.build(shape, runtime.default_device(), seed=seed)]
    sets.append(fresh_copy(sets[0]))
    g = guard(fn, spec)

    def checker(inputs):
        def check(out):
            bad = [v.detail for v in judge(spec, fn, inputs, actual=out) if not v.ok]
            if bad:
                raise AssertionError(bad[0])
        return check

    calls = [(lambda inputs=inputs: spec.call(g, inputs)) for inputs in sets]
    return timed_loop(calls, policy, device or CudaDevice(policy), [checker(s) for s in sets])


def host_times(validated: Callable[[], Any] | None, launch: Callable[[], Any], reps: int = 20) -> tuple:
    """``(host_validated_us, host_launch_us)``: the median host wall time of one call of each (a synchronize
    before every call, so no queued work is counted; the call's own syncs, e.g. a validated call's copies of
    metadata to the host, are). GPU only; ``validated`` None gives None for it."""
    require_gpu()
    import torch  # deferred: the report imports this module; --help loads no torch

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


def measure_provider(op: str, provider, args: tuple, kwargs: dict | None = None, *,
                     policy: TimingPolicy = DEFAULT_POLICY, check: Callable[[Any], None] | None = None,
                     validated: Callable[[], Any] | None = None, fresh: list | None = None) -> Timing:
    """Time ``provider`` (a ``kernels.impls.Provider``) on ``op`` with ``(args, kwargs)``; see the module
    docstring. ``validated`` (a validated call of the same implementation): also measure host overhead
    (``host_times``) after timing. ``fresh``: further input sets ``[(args, kwargs, check)]`` the timed calls
    alternate with (each set's setup untimed, each judged by its own check)."""
    require_gpu()
    call = timed_call(op, provider, args, kwargs)
    sets = [(call, check)] + [(timed_call(op, provider, a, k), c) for a, k, c in (fresh or [])]

    def judged(tc, chk):
        return None if chk is None else (lambda out: chk(tc.postprocess(out) if tc.postprocess else out))

    timing = measure([tc.fn for tc, _ in sets], op=op, provider=provider.name, policy=policy,
                     check=None if check is None else [judged(tc, c) for tc, c in sets])
    timing.timed_path, timing.hints = call.path, call.hints
    if validated is not None:
        timing.host_validated_us, timing.host_launch_us = host_times(validated, call.fn)
    return timing


def measure_impl(op: str, provider, args: tuple, kwargs: dict | None = None, *,
                 policy: TimingPolicy = DEFAULT_POLICY, check: Callable[[Any], None] | None = None,
                 fresh: list | None = None) -> Timing:
    """``provider`` on ``op`` through its timed path (``Provider.timed``), with the host overhead of one
    validated call (its function, unguarded) and of one timed-path call. The one timed path of the report
    (``measure_case``) and pytest-benchmark."""
    require_gpu()
    fn = provider.op(op)
    raw = getattr(fn, "__wrapped__", fn)
    kwargs = kwargs or {}
    return measure_provider(op, provider, args, kwargs, policy=policy, check=check,
                            validated=lambda: raw(*args, **kwargs), fresh=fresh)


def compare_providers(op: str, providers: list, args: tuple, kwargs: dict | None = None, *,
                      policy: TimingPolicy = DEFAULT_POLICY,
                      check: Callable[[Any], None] | None = None) -> dict[str, Timing | str]:
    """Each of ``providers`` on ``op`` with the same inputs under the same policy, by name; a provider that fails
    its check or raises is reported by its error message instead of a time."""
    out: dict[str, Timing | str] = {}
    for provider in providers:
        try:
            out[provider.name] = measure_provider(op, provider, args, kwargs, policy=policy, check=check)
        except GpuUnavailable:
            raise
        except Exception as exc:  # a baseline that cannot run this case: say why, keep the others
            out[provider.name] = f"{type(exc).__name__}: {exc}"
    return out
