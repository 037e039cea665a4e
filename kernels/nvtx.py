"""NVTX ranges for nsys, and the same ranges recorded in-process as a Chrome trace (open it in Perfetto).

One domain, "servekernels", with a category per subsystem. Without the ``nvtx`` package, or without nsys
attached, a range costs a function call and a context-variable read. Recording is opt-in and scoped:

    with record_trace() as trace:
        with nvtx_range("step", "engine"):
            ...
    trace.write("out.json")

nsys recipe: ``nsys profile -t cuda,nvtx -o prof python ...`` then
``nsys stats --report nvtx_sum,nvtx_gpu_proj_sum prof.nsys-rep``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import threading
import time

DOMAIN = "servekernels"
CATEGORIES = {"kernel": 1, "engine": 2, "model": 3, "bench": 4, "report": 5}

_recorder: contextvars.ContextVar["TraceRecorder | None"] = contextvars.ContextVar("servekernels_trace", default=None)


@functools.lru_cache(maxsize=1)
def _nvtx_domain():
    """The nvtx package's domain object, or None when the package is not installed."""
    try:
        import nvtx  # deferred: nvtx is optional (a no-op without it)
    except ImportError:
        return None
    return nvtx.get_domain(DOMAIN)


class TraceRecorder:
    """Collects completed ranges as Chrome-trace "complete" events (microseconds since recording began)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._t0 = time.perf_counter_ns()
        self._lock = threading.Lock()

    def add(self, name: str, category: str, start_ns: int, end_ns: int, args: dict | None = None) -> None:
        ev = {"name": name, "cat": category, "ph": "X", "pid": os.getpid(), "tid": threading.get_ident() % 2**31,
              "ts": (start_ns - self._t0) / 1e3, "dur": (end_ns - start_ns) / 1e3}
        if args:
            ev["args"] = args
        with self._lock:
            self.events.append(ev)

    def totals_us(self) -> dict[str, float]:
        """Total microseconds per range name."""
        out: dict[str, float] = {}
        for ev in self.events:
            out[ev["name"]] = out.get(ev["name"], 0.0) + ev["dur"]
        return out

    def write(self, path) -> None:
        with open(path, "w") as f:
            json.dump({"traceEvents": self.events, "displayTimeUnit": "ms",
                       "otherData": {"domain": DOMAIN}}, f)


@contextlib.contextmanager
def record_trace():
    """Record every ``nvtx_range`` entered in this context (thread/task-local) into a TraceRecorder."""
    rec = TraceRecorder()
    token = _recorder.set(rec)
    try:
        yield rec
    finally:
        _recorder.reset(token)


@contextlib.contextmanager
def nvtx_range(name: str, category: str = "kernel", **args):
    """An NVTX push/pop range in domain "servekernels" (category by subsystem), also recorded when tracing."""
    domain = _nvtx_domain()
    rec = _recorder.get()
    if domain is not None:
        domain.push_range(domain.get_event_attributes(message=name, category=CATEGORIES.get(category, 0)))
    start = time.perf_counter_ns() if rec is not None else 0
    try:
        yield
    finally:
        if rec is not None:
            rec.add(name, category, start, time.perf_counter_ns(), args or None)
        if domain is not None:
            domain.pop_range()


def annotate(name: str | None = None, category: str = "kernel"):
    """Decorator form of ``nvtx_range`` (kernel launchers use it: ``@annotate("paged_decode")``)."""

    def wrap(fn):
        label = name or fn.__name__

        @functools.wraps(fn)
        def inner(*a, **kw):
            with nvtx_range(label, category):
                return fn(*a, **kw)

        return inner

    return wrap
