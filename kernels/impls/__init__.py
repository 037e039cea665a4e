"""Implementations of the registry's ops (``kernels.ops``), one provider per file.

A provider is a ``Provider``: a name, ``op(name)`` giving its function for an op under the contract's
signature (``docs/contract.md``), what it declines (``unsupported``: op -> {feature: reason}, features as
``OpSpec.features`` names them, e.g. ``fp8_kv``, ``soft_cap``, ``return_lse``), and the known deviations from
the contract that stay pinned as strict expected failures (``deviations``: pytest node-id substring -> reason).

Built in (``kernels/impls/<name>.py``): ``servekernels`` (this project's Triton kernels), ``reference`` (the
float64 oracle itself, as a sanity row), ``torch`` (the eager baseline a user writes first), ``vllm`` (vLLM's
Triton kernels, ``kernels/impls/vllm/``, one file per op). A user's: ``--impl some.module`` or
``some.module:obj``, whose attributes named like the contract's functions are its ops (an optional
``SERVEKERNELS_UNSUPPORTED`` / ``SERVEKERNELS_DEVIATIONS`` dict declares the rest), or a package registering
itself under the entry-point group ``servekernels.impls``. ``load(name)`` resolves any of them.

Importing this package imports neither torch nor triton.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

ENTRY_POINT_GROUP = "servekernels.impls"


class Unsupported(Exception):
    """A provider declines a case: ``str(exc)`` starts with the feature (``"fp8_kv: ..."``)."""


class NotProvidedError(LookupError):
    """The provider has no function for this op."""


@dataclass
class Provider:
    name: str
    description: str
    functions: dict[str, Callable] | Callable[[str], Callable | None]  # op -> fn, or a lookup
    unsupported: dict[str, dict[str, str]] = field(default_factory=dict)
    deviations: dict[str, str] = field(default_factory=dict)  # regex over case names / pytest node ids -> reason
    unsupported_tests: dict[str, str] = field(default_factory=dict)  # regex over pytest node ids -> reason (skip)
    triton: bool = True  # its kernels are Triton kernels (counted under the interpreter)
    internal: bool = False  # this project's own kernels (internal tests run only for it)
    # declined features whose values are wrong only here (an interpreter bug) while launches and traffic are
    # real: the report still counts them (parity "unsupported")
    count_despite: frozenset = frozenset()

    def op(self, name: str) -> Callable:
        """The provider's function for op ``name``, wrapped so a declined feature raises ``Unsupported``."""
        fn = self.functions(name) if callable(self.functions) else self.functions.get(name)
        if fn is None:
            raise NotProvidedError(f"{self.name}: op {name} not provided")
        declined = self.unsupported.get(name, {})
        if not declined:
            return fn
        from kernels.ops import registry

        spec = registry().get(name)

        def guarded(*args, **kwargs):
            feats = _features(spec, args, kwargs)
            for feat, reason in declined.items():
                if feat in feats:
                    raise Unsupported(f"{feat}: {reason}")
            return fn(*args, **kwargs)

        guarded.__name__ = getattr(fn, "__name__", name)
        guarded.__wrapped__ = fn
        return guarded

    def deviation_for(self, name: str) -> str | None:
        """The reason of the first known deviation whose pattern (a regular expression) matches ``name`` (a check
        case name or a pytest node id), or None."""
        return _first_match(self.deviations, name)

    def unsupported_test(self, nodeid: str) -> str | None:
        """Why a parity test does not apply to this provider (``unsupported_tests``), or None."""
        return _first_match(self.unsupported_tests, nodeid)

    def namespace(self):
        """The provider's functions under the contract's names, as one object (``impl.paged_decode(...)``)."""
        from types import SimpleNamespace

        from kernels.ops import HELPERS, registry

        return SimpleNamespace(**{n: self.op(n) for n in (*registry(), *HELPERS) if self.provides(n)})

    def provides(self, name: str) -> bool:
        try:
            self.op(name)
        except NotProvidedError:
            return False
        return True

    def why_unsupported(self, name: str, args, kwargs) -> str | None:
        """The declined feature's reason for this call, or None."""
        from kernels.ops import registry

        declined = self.unsupported.get(name, {})
        feats = _features(registry().get(name), args, kwargs)
        for feat, reason in declined.items():
            if feat in feats and feat != "return_lse":
                return f"{feat}: {reason}"
        return None


def _first_match(patterns: dict[str, str], name: str) -> str | None:
    import re

    for pattern, reason in patterns.items():
        if re.search(pattern, name):
            return reason
    return None


def _features(spec, args, kwargs) -> set:
    """The op spec's features of one call, its arguments given positionally or by name alike (bound to the
    reference's signature). A call too malformed to read features from has none: the implementation itself
    then decides what to do with it (raise a ValueError, ideally)."""
    import inspect

    if spec is None:
        return set()
    try:
        sig = inspect.signature(spec.reference_fn())
        positional = [p.name for p in sig.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        merged = {**dict(zip(positional, args)), **kwargs}
        ordered = []
        for pname in positional:
            if pname not in merged:
                break
            ordered.append(merged[pname])
        rest = {k: v for k, v in merged.items() if k not in positional}
        feats = set(spec.features(tuple(ordered), rest))
    except Exception:  # noqa: BLE001 - bad input: no features, the call itself must reject it
        feats = set()
    if kwargs.get("return_lse"):
        feats.add("return_lse")
    return feats


def load(name: str) -> Provider:
    """A built-in provider by name, an entry point of ``servekernels.impls``, or a dotted ``module[:attr]``.
    Raises ``ValueError`` naming ``--impl`` when nothing by that name loads."""
    if name in builtin_names():
        return importlib.import_module(f"{__name__}.{name}").PROVIDER
    target = _entry_points().get(name, name)
    try:
        return from_object(name, target)
    except ImportError as exc:
        raise ValueError(f"--impl: {name!r} is neither a built-in provider ({', '.join(builtin_names())}), an entry point "
                         f"of {ENTRY_POINT_GROUP!r} nor an importable module ({exc})") from exc


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def from_object(name: str, target: str) -> Provider:
    """A user's implementation: ``module`` or ``module:attr``; an attribute that is already a ``Provider`` is
    used as it is; otherwise its attributes named like the registry's ops are the functions."""
    from kernels.ops import registry, resolve

    obj = resolve(target)
    if isinstance(obj, Provider):
        return obj
    ops = registry()
    functions = {op: getattr(obj, op) for op in ops if callable(getattr(obj, op, None))}
    if not functions:
        raise ValueError(f"--impl: {target!r} defines none of the contract's functions ({', '.join(ops)})")
    return Provider(name=name, description=f"user implementation {target}", functions=functions,
                    unsupported=dict(getattr(obj, "SERVEKERNELS_UNSUPPORTED", {}) or {}),
                    unsupported_tests=dict(getattr(obj, "SERVEKERNELS_UNSUPPORTED_TESTS", {}) or {}),
                    deviations=dict(getattr(obj, "SERVEKERNELS_DEVIATIONS", {}) or {}),
                    triton=bool(getattr(obj, "SERVEKERNELS_TRITON", True)))


def builtin_names() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
