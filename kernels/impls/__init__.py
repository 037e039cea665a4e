"""Implementations of the registry's ops (``kernels.ops``), one provider per file.

A provider is a ``Provider``: a name, ``op(name)`` giving its function for an op under the contract's
signature (``docs/contract.md``), what it declines (``unsupported``: op -> {feature: reason}, features as
``OpSpec.features`` names them, e.g. ``fp8_kv``, ``soft_cap``, ``return_lse``), and the known deviations from
the contract that stay pinned as strict expected failures (``deviations``: pytest node-id substring -> reason).
A provider receives only the keywords of the contract's signature plus the ``extras`` it declares (this project's
launcher keywords: ``num_sms``, ``validate``, host hints ...), and says whether it validates its input
(``validates``: if not, the bad-input tests skip for it).

A provider also knows how to be timed (``timed``): for an op with a timing setup (``timers``: op ->
``setup(*args, **kwargs)``, run once and untimed, returning the ``Launch`` the harness times: a peer's layout
conversion, metadata and workspaces in setup, its launch sequence in the ``Launch``) that setup; for any other op
its own function with ``validate=False`` and the op's host hints where it declares them in ``extras`` and its
signature names them (``launch_state``). A ``baseline`` provider is timed beside ours in a measured report, on
the ops it has a timing setup for, where it is available here (``unavailable``).

Built in (``kernels/impls/<name>.py``): ``servekernels`` (this project's Triton kernels), ``reference`` (the
float64 oracle itself, as a sanity row), ``torch`` (the eager baseline a user writes first), ``vllm`` (vLLM's
Triton kernels, ``kernels/impls/vllm/``, one file per op, each with its timing setup; a baseline),
``torch_sdpa`` (torch's SDPA on the paged batch gathered dense: a lower bound for attention; a baseline). A user's: ``--impl some.module`` or
``some.module:obj``, whose attributes named like the contract's functions are its ops (an optional
``SERVEKERNELS_UNSUPPORTED`` / ``SERVEKERNELS_DEVIATIONS`` dict, ``SERVEKERNELS_VALIDATES = False``,
``SERVEKERNELS_TRITON = False`` and ``SERVEKERNELS_EAGER_TORCH = False`` declare the rest; it declares no
extras), or a package registering itself under the entry-point group ``servekernels.impls``. ``load(name)`` resolves any of them.

``Unsupported`` and ``NotProvidedError`` are the op registry's (``kernels.ops``); the contract names them here too
(``kernels.impls.Unsupported``), the same classes.

Importing this package imports neither torch nor triton.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
import re
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Any, Callable

import kernels.reference
from kernels.ops import HELPERS, NotProvidedError, Unsupported, registry

ENTRY_POINT_GROUP = "servekernels.impls"

# what a timed call is (``Launch.path``, reported as ``Timing.timed_path``)
PLAIN = "plain call"
PEER = "peer setup (untimed) + launch"
VALIDATE_FALSE = "validate=False"


@dataclass
class Launch:
    """The zero-argument call the harness times for one provider on one input set, decided once, untimed:
    ``fn()`` is what the CUDA events bracket, ``path`` says what it is, ``hints`` the host hints it passes;
    ``postprocess`` (untimed) gives the check the contract's layout; ``state`` what the setup prepared."""

    fn: Callable[[], Any]
    path: str = PEER
    hints: dict = field(default_factory=dict)
    postprocess: Callable | None = None
    state: Any = None

    def __call__(self):
        return self.fn()


def peer_launch(run: Callable, state, postprocess: Callable | None = None) -> Launch:
    """A peer's timed call: ``run(state)`` where ``state`` is what its setup converted and allocated (untimed)."""
    return Launch(lambda: run(state), PEER, {}, postprocess, state)


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


def launch_state(op: str, fn: Callable, args: tuple, kwargs: dict, extras: frozenset) -> Launch:
    """Untimed: ``validate=False`` and the op's host hints (``OpSpec.hints``, computed here) for ``fn``, each only
    where its provider declares it among its launcher ``extras`` (beyond the contract, a provider receives only
    what it declares) and its signature takes it; ``path`` names what the timed call is."""
    spec = registry().get(op)
    keywords = accepted_keywords(fn) & set(extras)
    extra = {}
    if "validate" in keywords and "validate" not in kwargs:
        extra["validate"] = False
    hints = {k: v for k, v in (spec.hints(args, kwargs) if spec else {}).items() if k in keywords}
    path = (" + ".join(p for p, on in ((VALIDATE_FALSE, "validate" in extra), ("hints", bool(hints))) if on)
            or PLAIN)
    state = LaunchState(fn, tuple(args), {**kwargs, **hints, **extra}, hints, path)
    return Launch(state, path, dict(hints), None, state)


@dataclass
class Provider:
    name: str
    description: str
    functions: dict[str, Callable] | Callable[[str], Callable | None]  # op -> fn, or a lookup
    unsupported: dict[str, dict[str, str]] = field(default_factory=dict)
    deviations: dict[str, str] = field(default_factory=dict)  # regex over case names / pytest node ids -> reason
    triton: bool = True  # its kernels are Triton kernels (counted under the interpreter)
    # not Triton: its work is eager torch ops (each aten op counted as one launch, ``roofline.torch_counting``);
    # False for work no counter sees (numpy)
    eager_torch: bool = True
    internal: bool = False  # this project's own kernels (internal tests run only for it)
    # keywords beyond the contract's signature its functions take (this project's launcher extras: num_sms,
    # blocks_per_sm, split overrides, validate, host hints). Only these reach it: a call with any other keyword
    # the contract does not list raises ``Unsupported`` (a parity test about an extra skips, with the reason)
    extras: frozenset = frozenset()
    # it raises the contract's ValueError naming the argument on bad input; False: the bad-input tests
    # (``@pytest.mark.bad_input``) skip with that reason (a user module: ``SERVEKERNELS_VALIDATES = False``)
    validates: bool = True
    # op -> timing setup ``setup(*args, **kwargs) -> Launch`` (untimed); an op without one is timed through
    # ``launch_state`` on its function
    timers: dict[str, Callable] | Callable[[str], Callable | None] = field(default_factory=dict)
    baseline: bool = False  # timed beside ours in a measured report, on the ops it has a timing setup for
    unavailable: Callable[[], str | None] | None = None  # why it cannot run here (a peer library missing), or None

    def op(self, name: str) -> Callable:
        """The provider's function for op ``name``, wrapped so a declined feature, or a keyword that is neither the
        contract's nor one of ``extras``, raises ``Unsupported``."""
        fn = self.functions(name) if callable(self.functions) else self.functions.get(name)
        if fn is None:
            raise NotProvidedError(f"{self.name}: op {name} not provided")
        spec = registry().get(name)
        declined = self.unsupported.get(name, {})
        allowed = _contract_keywords(name) | self.extras if spec is not None else None
        if not declined and allowed is None:
            return fn

        def guarded(*args, **kwargs):
            if allowed is not None:
                for key in kwargs:
                    if key not in allowed:
                        raise Unsupported(f"{key}: not a keyword of the contract's {name} (a launcher extra of this "
                                          f"project's kernels); {self.name} does not declare it")
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

    def namespace(self):
        """The provider's functions under the contract's names, as one object (``impl.paged_decode(...)``)."""
        return SimpleNamespace(**{n: self.op(n) for n in (*registry(), *HELPERS) if self.provides(n)})

    def provides(self, name: str) -> bool:
        try:
            self.op(name)
        except NotProvidedError:
            return False
        return True

    def timer(self, name: str) -> Callable | None:
        """Op ``name``'s timing setup, or None."""
        return self.timers(name) if callable(self.timers) else self.timers.get(name)

    def timed(self, name: str, args: tuple, kwargs: dict | None = None) -> Launch:
        """The call the harness times for op ``name`` on ``(args, kwargs)``, decided once, untimed: the op's
        timing setup where the provider has one, else its function (without the per-call guard, whose feature
        check is host work) through ``launch_state``."""
        kwargs = dict(kwargs or {})
        setup = self.timer(name)
        if setup is not None:
            return setup(*args, **kwargs)
        fn = self.op(name)
        return launch_state(name, getattr(fn, "__wrapped__", fn), args, kwargs, self.extras)

    def why_unavailable(self) -> str | None:
        return self.unavailable() if self.unavailable is not None else None

    def why_unsupported(self, name: str, args, kwargs) -> str | None:
        """The declined feature's reason for this call, or None."""
        declined = self.unsupported.get(name, {})
        feats = _features(registry().get(name), args, kwargs)
        for feat, reason in declined.items():
            if feat in feats and feat != "return_lse":
                return f"{feat}: {reason}"
        return None


@functools.cache
def _contract_keywords(op: str) -> frozenset:
    """The parameter names of op ``op``'s contract signature (``OpSpec.contract_signature``)."""
    return frozenset(registry()[op].contract_signature().parameters)


def _first_match(patterns: dict[str, str], name: str) -> str | None:
    for pattern, reason in patterns.items():
        if re.search(pattern, name):
            return reason
    return None


def _features(spec, args, kwargs) -> set:
    """The op spec's features of one call, its arguments given positionally or by name alike (bound to the
    reference's signature). A call too malformed to read features from has none: the implementation itself
    then decides what to do with it (raise a ValueError, ideally)."""
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
    Raises ``ValueError`` with one line naming ``--impl`` and the problem when nothing by that name loads: no such
    module, a module that does not import (its exception and where it was raised), a missing ``:attr``, or a
    function that does not take the contract's arguments (``signature_problem``)."""
    if name in builtin_names():
        return importlib.import_module(f"{__name__}.{name}").PROVIDER
    target = _entry_points().get(name, name)
    module = target.partition(":")[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):  # the module itself is missing
            raise ValueError(f"--impl: {name!r} is neither a built-in provider ({', '.join(builtin_names())}), an "
                             f"entry point of {ENTRY_POINT_GROUP!r} nor an importable module ({exc})") from exc
        raise ValueError(f"--impl {name}: {module} does not import: {_one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises while importing: one line
        raise ValueError(f"--impl {name}: {module} does not import: {_one_line(exc)}") from exc
    return from_object(name, target)


def _one_line(exc: BaseException) -> str:
    """``Type: message (file, line N)``: the exception's first line and where it was raised (for a
    ``SyntaxError``, the offending line of the user's file; else the innermost frame of the traceback)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{_shown(exc.filename)}, line {exc.lineno}"
        text = exc.msg
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        frames = [f for f in frames if "importlib" not in f.filename] or frames
        where = f"{_shown(frames[-1].filename)}, line {frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {text}" + (f" ({where})" if where else "")


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies under it, else as it is."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def from_object(name: str, target: str) -> Provider:
    """A user's implementation: ``module`` or ``module:attr``; an attribute that is already a ``Provider`` is
    used as it is; otherwise its attributes named like the contract's functions (the registry's ops and the
    quantizers, ``route`` and ``moe_permute``: ``contract_functions``) are the functions, each of which must take
    the contract's arguments (``signature_problem``; a ``ValueError`` naming the first that does not)."""
    obj = _resolve_user(name, target)
    if isinstance(obj, Provider):
        return obj
    contract = contract_functions()
    functions = {op: getattr(obj, op) for op in contract if callable(getattr(obj, op, None))}
    if not functions:
        raise ValueError(f"--impl: {target!r} defines none of the contract's functions ({', '.join(contract)})")
    unsupported = {op: dict(v) for op, v in (getattr(obj, "SERVEKERNELS_UNSUPPORTED", {}) or {}).items()}
    for op, fn in functions.items():
        for keyword in _lacked_keywords(op, fn):  # an optional keyword it does not take: that feature declined
            unsupported.setdefault(op, {}).setdefault(keyword, f"{getattr(fn, '__name__', op)} takes no keyword "
                                                                f"{keyword}")
    for op, fn in functions.items():
        problem = signature_problem(op, fn, contract[op], declined=unsupported.get(op, {}))
        if problem:
            raise ValueError(f"--impl {name}: {problem}")
    return Provider(name=name, description=f"user implementation {target}", functions=functions,
                    unsupported=unsupported,
                    deviations=dict(getattr(obj, "SERVEKERNELS_DEVIATIONS", {}) or {}),
                    triton=bool(getattr(obj, "SERVEKERNELS_TRITON", True)),
                    eager_torch=bool(getattr(obj, "SERVEKERNELS_EAGER_TORCH", True)),
                    validates=bool(getattr(obj, "SERVEKERNELS_VALIDATES", True)))


def _lacked_keywords(op: str, fn) -> list[str]:
    """The op's ``OpSpec.optional_keywords`` that ``fn`` cannot take by name (none for a ``**kwargs`` function,
    or one without an inspectable signature)."""
    spec = registry().get(op)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    if spec is None or any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return [k for k in spec.optional_keywords if k not in names]


def _resolve_user(name: str, target: str):
    """``module[:attr.attr]`` -> the object; a missing attribute is a ``ValueError`` naming ``--impl`` and the
    module."""
    module, _, attr = target.partition(":")
    obj, path = importlib.import_module(module), module
    for part in filter(None, attr.split(".")):
        if not hasattr(obj, part):
            raise ValueError(f"--impl {name}: {path} has no attribute {part!r}")
        obj, path = getattr(obj, part), f"{path}.{part}"
    return obj


def contract_functions() -> dict[str, inspect.Signature]:
    """Every function of the contract an implementation may provide, with its signature: the registry's ops
    (``OpSpec.contract_signature``), then the quantizers, ``route`` and ``moe_permute`` (the references')."""
    out = {op: spec.contract_signature() for op, spec in registry().items()}
    for helper in HELPERS:
        fn = getattr(kernels.reference, helper)
        if inspect.isfunction(fn):  # not the weight types
            out[helper] = inspect.signature(fn).replace(return_annotation=inspect.Signature.empty)
    return out


def signature_problem(op: str, fn, contract: inspect.Signature, declined=()) -> str | None:
    """Why ``fn`` cannot be called as the contract (``contract``, op ``op``'s signature) calls it, or None. It must take the contract's positional arguments by position, require nothing else (but the keywords the
    contract requires), and take each of
    the contract's keywords by name (``**kwargs`` takes them all), except a keyword named like a feature it
    declines (``declined``: ``soft_cap``, ``return_lse``, ...). A callable without an inspectable signature is
    not judged here (its calls decide)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    positional = [p.name for p in contract.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # keywords the contract itself requires (a sampler's temperature) are always passed
    required = {p.name: None for p in contract.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty}
    problem = None
    try:
        sig.bind(*positional, **required)
    except TypeError as exc:
        problem = f"{exc} (the contract passes {len(positional)} positionally: {', '.join(positional)})"
    else:
        missing = []
        for p in contract.parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in declined:
                try:
                    sig.bind(*positional, **{**required, p.name: p.default})
                except TypeError:
                    missing.append(p.name)
        if missing:
            problem = (f"no keyword {', '.join(missing)} (take it, or declare the feature unsupported in "
                       "SERVEKERNELS_UNSUPPORTED)")
    if problem is None:
        return None
    return (f"{getattr(fn, '__module__', '?')}.{op}{sig} does not take the contract's arguments: {problem}; "
            f"the contract: {op}{contract}")


def builtin_names() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]


def baselines(name: str) -> tuple[list[Provider], list[str]]:
    """``(providers, notes)``: the built-in baselines with a timing setup for op ``name`` that can run here, and
    why each other baseline cannot (``Provider.unavailable``)."""
    found, notes = [], []
    for builtin in builtin_names():
        provider = load(builtin)
        if not provider.baseline:
            continue
        why = provider.why_unavailable()
        if why:
            notes.append(why)
        elif provider.timer(name) is not None:
            found.append(provider)
    return found, notes
