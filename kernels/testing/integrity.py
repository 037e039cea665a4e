"""The judge's integrity rules: what every consumer (``servekernels check``, the parity suite, the report's
measured path) enforces around a call of an implementation it judges, so that a verdict depends only on what the
implementation computes (docs/contract.md, "Implementations").

- ``JudgeSnapshot``: the oracle, the comparison, numpy's and torch's comparison functions and the timer, resolved
  before any implementation is imported; ``breaches()`` names every one replaced (the object or its code) since,
  and ``restore()`` puts them back. A consumer snapshots first, loads the implementation, then checks.
- ``guard(fn, spec)``: each call's input tensors are digested before and compared after (whole storages, so a
  write past a view counts; the op's documented in-place arguments, ``OpSpec.writes``, excepted), and the call
  runs under an audit hook that records the introspection a judged call has no business doing
  (``gc.get_objects``, ``gc.get_referrers``, ``sys._current_frames``: how the judge's own objects are found).
- ``vet_outputs``: every output a plain ``torch.Tensor`` of the stated dtype (``OpSpec.out_dtypes``), the
  reference's shape and the inputs' device, dense and non-overlapping, sharing no storage with an input or with
  an earlier call's output (a persistent workspace handed out twice).
- ``fresh_values``: the same inputs' storage refilled with new values where a cheap fingerprint does not look
  (the first argument's interior, sign-flipped: exact in every float format): a cache keyed on pointers, shapes
  or first and last bytes then returns a stale answer and fails.
- ``run_seed`` / ``draw_seed``: the one seed every randomly drawn input derives from, and the draws that must not
  derive from it (the timed loop's re-check iteration comes from ``os.urandom``).

A failed rule raises ``Breach(defence, detail)``; ``defence`` is one of ``DEFENCES`` (the name a report prints).
Importing this module imports neither torch nor numpy.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import os
import re
import sys
import threading
import time
from typing import Any, Callable

import kernels.ops as ops
from kernels.impls import builtin_names
from kernels.ops import NotProvided, registry

DEFENCES = {
    "judge untouched": "the oracle, the comparison and the timer are the objects resolved before the "
                       "implementation was imported",
    "no introspection": "a judged call may not walk the garbage collector or other threads' frames",
    "inputs unchanged": "every input is bitwise the same after the call (documented in-place outputs excepted)",
    "plain output": "outputs are plain torch.Tensor, not a subclass",
    "output dtype/shape/device": "outputs have the contract's dtype, the reference's shape and the inputs' device",
    "output owns storage": "outputs are dense, share no storage with an input or an earlier call's output",
    "fresh values": "the same inputs' storage refilled with new values: a cache keyed on pointers, shapes or a "
                    "fingerprint answers stale",
    "drawn shape": "a shape drawn per run beyond the public check shapes",
    "values": "the output against the float64 reference, computed after the call on the verified inputs",
    "re-check after timing": "the last timed call's output is judged",
    "re-check inside the timed loop": "the output of an iteration drawn from os.urandom is judged",
    "impossible speed": "a time below bytes_min / bandwidth cannot be a measurement",
}


class Breach(AssertionError):
    """An integrity rule failed: ``defence`` (a key of ``DEFENCES``) and what was seen."""
    def __init__(self, defence: str, detail: str):
        if defence not in DEFENCES:
            raise ValueError(f"defence: unknown {defence!r}")
        super().__init__(f"{defence}: {detail}")
        self.defence, self.detail = defence, detail


# ---------------------------------------------------------------------------------------------------- seeds

SEED_ENV = "SERVEKERNELS_SEED"
FIXED_SEED = 0  # this project's own providers and CI: the same draw every run


def run_seed(seed: int | None, impls) -> int:
    """The run's seed: ``seed`` when given; else the fixed default where every implementation is a built-in
    provider (this project's and its peers', judged in CI on a fixed draw), else a fresh one from ``os.urandom``
    (a user's implementation never meets the same draw twice, so none can be tuned to it)."""
    if seed is not None:
        return int(seed)

    if all(name in builtin_names() for name in impls):
        return FIXED_SEED
    return draw_seed()


def draw_seed() -> int:
    """A fresh seed from ``os.urandom`` (31 bits, printable and replayable as ``--seed``)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def case_seed(seed: int, name: str) -> int:
    """The seed of one named case in a run: the name's length (each case's historical fixed draw) plus
    1000 x the run seed."""
    return len(name) + 1000 * int(seed)


# ------------------------------------------------------------------------------------------- judge identity

def _judge_objects() -> dict[str, Any]:
    """``{dotted name: object}`` of everything a verdict or a timing is computed with."""
    import numpy as np  # deferred: this module loads without torch or numpy (--help)
    import numpy.testing  # deferred: this module loads without torch or numpy (--help)
    import torch  # deferred: this module loads without torch or numpy (--help)
    import torch.testing  # deferred: this module loads without torch or numpy (--help)

    import kernels.reference._arrays as arrays  # deferred: this module loads without torch or numpy (--help)
    import kernels.testing.assertions as assertions  # deferred: this module loads without torch or numpy (--help)
    import kernels.testing.judge as judge  # deferred: this module loads without torch or numpy (--help)

    found = {
        "torch.allclose": torch.allclose, "torch.isclose": torch.isclose, "torch.equal": torch.equal,
        "torch.isnan": torch.isnan, "torch.testing.assert_close": torch.testing.assert_close,
        "torch.Tensor.cpu": torch.Tensor.cpu, "torch.Tensor.to": torch.Tensor.to,
        "torch.Tensor.numpy": torch.Tensor.numpy, "torch.Tensor.detach": torch.Tensor.detach,
        "torch.cuda.synchronize": torch.cuda.synchronize, "torch.cuda.Event": torch.cuda.Event,
        "torch.cuda.Event.elapsed_time": torch.cuda.Event.elapsed_time,
        "numpy.allclose": np.allclose, "numpy.isclose": np.isclose, "numpy.isnan": np.isnan,
        "numpy.isfinite": np.isfinite, "numpy.abs": np.abs, "numpy.where": np.where, "numpy.max": np.max,
        "numpy.argmax": np.argmax, "numpy.asarray": np.asarray, "numpy.broadcast_to": np.broadcast_to,
        "numpy.testing.assert_allclose": numpy.testing.assert_allclose,
        "time.perf_counter": time.perf_counter, "time.perf_counter_ns": time.perf_counter_ns,
        "time.monotonic": time.monotonic,
        "kernels.testing.judge.compare": judge.compare, "kernels.testing.judge.judge": judge.judge,
        "kernels.testing.judge.expected_outputs": judge.expected_outputs, "kernels.ops.resolve": ops.resolve,
        "kernels.reference._arrays.f64": arrays.f64,
        "kernels.testing.assertions.describe_mismatch": assertions.describe_mismatch,
        "kernels.testing.assertions.max_rel_err": assertions.max_rel_err,
    }
    for name in ("servekernels.check", "perf.harness", "correctness.impl"):
        module = sys.modules.get(name)  # only where the consumer imported it (the judge is never imported here)
        for attr in ("compare", "measure", "timed_loop", "judge_call", "_skipping"):
            if module is not None and hasattr(module, attr):
                found[f"{name}.{attr}"] = getattr(module, attr)
    for op, spec in ops.registry().items():
        found[f"{spec.reference} ({op} reference)"] = spec.reference_fn()
        found[f"kernels.ops.{op}.SPEC.tolerance"] = spec.tolerance
        found[f"kernels.ops.{op}.SPEC.call"] = spec.call
    return found


def _code(obj):
    return getattr(obj, "__code__", None)


class JudgeSnapshot:
    """The judge's objects (and their code) as resolved now: take it before importing an implementation."""
    def __init__(self):
        self.objects = _judge_objects()
        self.codes = {name: _code(obj) for name, obj in self.objects.items()}

    def breaches(self) -> list[str]:
        """The names whose object, or whose function code, is no longer the one snapshotted."""
        now = _judge_objects()
        out = []
        for name, obj in self.objects.items():
            if now.get(name) is not obj:
                out.append(name)
            elif _code(obj) is not self.codes[name]:
                out.append(f"{name}.__code__")
        return out

    def restore(self) -> None:
        """Put every snapshotted object (and code) back where it was found."""
        for name, obj in self.objects.items():
            if _code(obj) is not None and _code(obj) is not self.codes[name]:
                obj.__code__ = self.codes[name]
            if " (" in name:  # a spec's reference: its module attribute
                path = name.split(" (")[0]
                module, _, attr = path.partition(":")
                setattr(importlib.import_module(module), attr, obj)
                continue
            if ".SPEC." in name:
                continue  # a frozen dataclass field: a replacement shows as a breach; specs are not mutable
            owner_path, _, attr = name.rpartition(".")
            owner = _resolve_dotted(owner_path)
            if owner is not None and getattr(owner, attr, None) is not obj:
                setattr(owner, attr, obj)

    def check(self, who: str) -> None:
        """Raise ``Breach("judge untouched")`` naming what ``who`` replaced (after putting it back)."""
        bad = self.breaches()
        if bad:
            self.restore()
            raise Breach("judge untouched", f"{who} replaced {', '.join(bad[:4])}"
                         + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""))


def _resolve_dotted(path: str):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p, None)
        return obj
    return None


# ---------------------------------------------------------------------------------------------- introspection

WATCHED_EVENTS = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames")
_watch = threading.local()
_HOOKED = []


def _audit(event: str, args) -> None:
    if event in WATCHED_EVENTS and getattr(_watch, "seen", None) is not None:
        _watch.seen.append(event)


def _install_hook() -> None:
    if not _HOOKED:  # an audit hook cannot be removed: one, for the process, recording only inside a watch
        sys.addaudithook(_audit)
        _HOOKED.append(True)


class watching:
    """Inside: the watched introspection events this thread raises are recorded in ``self.seen``."""
    def __enter__(self):
        _install_hook()
        self.outer = getattr(_watch, "seen", None)
        self.seen = _watch.seen = []
        return self

    def __exit__(self, *exc):
        _watch.seen = self.outer
        return False


# ------------------------------------------------------------------------------------------------- inputs

def tensors(obj, path: str = "args") -> list[tuple[str, Any]]:
    """``[(path, tensor)]`` of every tensor in ``obj``: tuples, lists, dicts and dataclass weights
    (``Int4Weight``, ``Fp8Weight``) walked."""
    import torch  # deferred: this module loads without torch or numpy (--help)

    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, (tuple, list)):
        return [t for i, x in enumerate(obj) for t in tensors(x, f"{path}[{i}]")]
    if isinstance(obj, dict):
        return [t for k, x in obj.items() for t in tensors(x, f"{path}[{k!r}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in tensors(getattr(obj, f.name), f"{path}.{f.name}")]
    return []


def storage_digest(t) -> bytes | None:
    """A digest of the whole storage behind ``t`` (bytes outside the view included); None on meta."""
    import torch  # deferred: this module loads without torch or numpy (--help)

    if t.device.type == "meta":
        return None
    raw = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
    if raw.device.type == "cpu":
        return hashlib.blake2b(raw.numpy(), digest_size=16).digest()  # the buffer itself: no copy
    # on a device: exact integer sums of the bytes, plain and position-weighted, in chunks (no host copy of data)
    total, weighted, chunk = 0, 0, 1 << 26
    for start in range(0, raw.numel(), chunk):
        part = raw[start:start + chunk].to(torch.int64)
        pos = torch.arange(start, start + part.numel(), device=raw.device, dtype=torch.int64) % 65521 + 1
        total += int(part.sum())
        weighted += int((part * pos).sum())
    return f"{raw.numel()}:{total}:{weighted}".encode()


def digests(args, kwargs, skip: tuple = ()) -> dict[str, bytes | None]:
    """``{path: storage digest}`` of every input tensor but the positional arguments in ``skip``."""
    pairs = [p for i, a in enumerate(args) if i not in skip for p in tensors(a, f"args[{i}]")]
    pairs += tensors(kwargs, "kwargs")
    return {path: storage_digest(t) for path, t in pairs}


def guard(fn: Callable, spec=None, name: str = "") -> Callable:
    """``fn`` with the per-call rules: inputs digested before and compared after (``spec.writes`` excepted),
    watched introspection refused. Raises ``Breach``."""
    skip = tuple(getattr(spec, "writes", ()) or ())
    label = name or getattr(spec, "name", "") or getattr(fn, "__name__", "call")
    skip_names = _written_names(spec, skip)  # the same in-place arguments, passed by keyword

    def guarded(*args, **kwargs):
        read = {k: v for k, v in kwargs.items() if k not in skip_names}
        before = digests(args, read, skip)
        with watching() as w:
            result = fn(*args, **kwargs)
        if w.seen:
            raise Breach("no introspection", f"{label} called {', '.join(sorted(set(w.seen)))} during the call")
        _no_alias(spec, label, args, read, skip, result)
        after = digests(args, read, skip)
        changed = [p for p, d in before.items() if d is not None and after.get(p) != d]
        if changed:
            raise Breach("inputs unchanged", f"{label} wrote into its input{'s' if len(changed) > 1 else ''} "
                         f"{', '.join(_arg_names(spec, changed))}")
        return result

    guarded.__name__ = getattr(fn, "__name__", label)
    guarded.__wrapped__ = getattr(fn, "__wrapped__", fn)
    return guarded


def _written_names(spec, skip: tuple) -> set:
    """The reference's parameter names of the positional in-place arguments ``skip`` (``OpSpec.writes``)."""
    try:
        params = list(inspect.signature(spec.reference_fn()).parameters) if spec is not None and skip else []
    except (TypeError, ValueError):
        params = []
    return {params[i] for i in skip if i < len(params)}


def _no_alias(spec, label, args, kwargs, skip, result) -> None:
    """No returned tensor shares storage with an input (the op's in-place arguments excepted)."""
    outs = [t for _, t in tensors(result, "out") if t.device.type != "meta" and t.numel()]
    if not outs:
        return
    ins = [(p, _span(t)) for i, a in enumerate(args) if i not in skip for p, t in tensors(a, f"args[{i}]")
           if t.numel()] + [(p, _span(t)) for p, t in tensors(kwargs, "kwargs") if t.numel()]
    for out in outs:
        lo, hi = _span(out)
        for path, (a, b) in ins:
            if lo < b and a < hi:
                raise Breach("output owns storage", f"{label} returned a tensor that shares storage with its "
                             f"input {_arg_names(spec, [path])[0]}")


def _arg_names(spec, paths: list[str]) -> list[str]:
    """``args[4]`` -> ``seq_lens`` (the reference's parameter name), for a failure a reader understands."""
    names = []
    try:
        params = list(inspect.signature(spec.reference_fn()).parameters) if spec is not None else []
    except (TypeError, ValueError):
        params = []
    for p in paths:
        m = re.match(r"args\[(\d+)\](.*)", p)
        if m and int(m.group(1)) < len(params):
            names.append(params[int(m.group(1))] + m.group(2))
        else:
            names.append(p)
    return names


# ------------------------------------------------------------------------------------------------ outputs

def dense(t) -> bool:
    """Every element at its own address and no gap: strides sorted are a contiguous layout of some permutation
    (a transposed output passes; an expanded, overlapping or padded one does not)."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _span(t) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


def vet_outputs(spec, inputs, actual: dict, expected: dict, earlier: list | None = None) -> None:
    """The output rules (module docstring) for ``actual`` (``{name: output}``), ``expected`` the reference's.
    ``earlier``: outputs of previous calls, still alive. Raises ``Breach``. An op with in-place outputs
    (``spec.writes``) returns the caller's own tensors: only their values are judged."""
    import torch  # deferred: this module loads without torch or numpy (--help)


    if getattr(spec, "writes", ()):
        return
    first = tensors(inputs.args)[0][1] if tensors(inputs.args) else None
    if first is not None and first.device.type == "meta":
        return
    dtypes = spec.out_dtypes(inputs) if getattr(spec, "out_dtypes", None) else {}
    ins = [(p, _span(t)) for p, t in tensors(inputs.args) + tensors(inputs.kwargs, "kwargs") if t.numel()]
    prev = [_span(t) for t in (earlier or []) if isinstance(t, torch.Tensor) and t.numel()]
    for name, out in actual.items():
        if isinstance(out, NotProvided):
            continue
        if type(out) is not torch.Tensor:
            raise Breach("plain output", f"{spec.name}.{name} is a {type(out).__module__}.{type(out).__qualname__}, "
                         "not a torch.Tensor")
        want = dtypes.get(name)
        shape = tuple(getattr(expected.get(name), "shape", out.shape))
        if want is not None and out.dtype != want:
            raise Breach("output dtype/shape/device", f"{spec.name}.{name} is {out.dtype}, the contract says {want}")
        if tuple(out.shape) != shape:
            raise Breach("output dtype/shape/device", f"{spec.name}.{name} has shape {tuple(out.shape)}, the "
                         f"reference's is {shape}")
        if first is not None and out.device != first.device:
            raise Breach("output dtype/shape/device", f"{spec.name}.{name} is on {out.device}, its inputs on "
                         f"{first.device}")
        if not out.numel():
            continue
        if not dense(out):
            raise Breach("output owns storage", f"{spec.name}.{name} is a strided view (strides {out.stride()} "
                         f"for shape {tuple(out.shape)}): not dense, a caller reading it as laid out reads wrong")
        lo, hi = _span(out)
        for path, (a, b) in ins:
            if lo < b and a < hi:
                raise Breach("output owns storage", f"{spec.name}.{name} shares storage with input "
                             f"{_arg_names(spec, [path])[0]}")
        if any(lo < b and a < hi for a, b in prev):
            raise Breach("output owns storage", f"{spec.name}.{name} shares storage with an earlier call's output "
                         "(a workspace handed out twice: the first caller's result changes under it)")
    _vet_distinct(spec, actual)


def vet_returned(label: str, result) -> None:
    """The output rules that need no reference (the parity suite's ``T``): every returned tensor a plain
    ``torch.Tensor``, dense (``guard`` has already refused one sharing an input's storage). Raises ``Breach``."""
    import torch  # deferred: this module loads without torch or numpy (--help)

    for path, t in tensors(result, "out"):
        if type(t) is not torch.Tensor:
            raise Breach("plain output", f"{label} returned a {type(t).__module__}.{type(t).__qualname__} "
                         f"({path}), not a torch.Tensor")
        if t.device.type != "meta" and t.numel() and not dense(t):
            raise Breach("output owns storage", f"{label} returned a strided view ({path}: strides {t.stride()} for "
                         f"shape {tuple(t.shape)})")


def _vet_distinct(spec, actual: dict) -> None:
    import torch  # deferred: this module loads without torch or numpy (--help)

    spans = [(n, _span(t)) for n, t in actual.items() if isinstance(t, torch.Tensor) and t.numel()]
    for i, (n1, (a1, b1)) in enumerate(spans):
        for n2, (a2, b2) in spans[i + 1:]:
            if a1 < b2 and a2 < b1 and not _disjoint_views(actual[n1], actual[n2]):
                raise Breach("output owns storage", f"{spec.name}.{n1} and {spec.name}.{n2} overlap in memory")


def _disjoint_views(x, y) -> bool:
    """Two dense views of one buffer that do not overlap (one allocation split in two is fine)."""
    xs, ys = x.data_ptr(), y.data_ptr()
    xe, ye = xs + x.numel() * x.element_size(), ys + y.numel() * y.element_size()
    return xe <= ys or ye <= xs


# ------------------------------------------------------------------------------------------------ fresh values

def refreshed_argument(inputs) -> int:
    """The position of the argument ``fresh_values`` refills: the first dense float tensor of >= 3 elements (the
    first argument of every op but those led by an index or a view, such as RoPE's positions and q)."""
    for i, a in enumerate(inputs.args):
        if (hasattr(a, "is_floating_point") and a.is_floating_point() and a.device.type != "meta" and dense(a)
                and a.numel() >= 3):
            return i
    raise ValueError("inputs: no argument is a dense float tensor of >= 3 elements")


def fresh_values(inputs) -> str:
    """Refill ``inputs`` in place with new values of the same structure: the interior of its first dense float
    argument (``refreshed_argument``: all but its first and last eighth, as flat memory) sign-flipped, bitwise
    (exact for every float format, NaN stays NaN). Same storage, same shapes, same first and last bytes: only a
    cache keyed on pointers, shapes or a sparse fingerprint answers the previous call's result. Returns what
    changed, for the failure line."""
    import torch  # deferred: this module loads without torch or numpy (--help)

    i = refreshed_argument(inputs)
    t, path = inputs.args[i], f"args[{i}]"
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    flat = t.as_strided((t.numel(),), (1,), t.storage_offset()).view(bits)  # dense: one block of memory
    edge = max(1, t.numel() // 8)
    sign = 0x80 if bits == torch.uint8 else -(1 << (8 * t.element_size() - 1))  # the sign bit, as that int
    flat[edge:t.numel() - edge] ^= sign
    return f"{_arg_names(inputs_spec(inputs), [path])[0]}[{edge}:{t.numel() - edge}] negated (flat)"


def fresh_copy(inputs):
    """New inputs of the same structure in new storage for the argument ``fresh_values`` changes (the rest
    shared): a copy of ``inputs`` with that argument cloned and refilled."""
    i = refreshed_argument(inputs)
    args = list(inputs.args)
    args[i] = args[i].clone()
    other = copy.copy(inputs)
    other.args = tuple(args)
    if hasattr(inputs.data, "q") and inputs.data.q is inputs.args[0]:  # an attention batch: q is the first argument
        other.data = copy.copy(inputs.data)
        other.data.q = args[0]
    fresh_values(other)
    return other


def inputs_spec(inputs):
    return registry().get(inputs.op)
