"""The op registry: one module per op says everything the suite knows about it.

Each module in this package (``kernels/ops/<op>.py``) defines ``SPEC = OpSpec(...)``: the float64 reference,
this project's kernel, the eager torch baseline, how to build poisoned inputs at a named shape, how to call
any implementation and collect its named outputs, the derived per-element tolerance of each output, the cost
model, the named shapes ``servekernels check`` runs, the report/asv/pytest-benchmark catalogue cases, the
goals and the host hints of its ``validate=False`` launch path (``hints(args, kwargs)``: what the timing harness
computes before timing and passes to the timed call). Every consumer (``servekernels check``, the report, the
parity suite's judge, the benchmarks) loops over ``registry()``; adding an op is its spec, reference, kernel and
test files, with no list edited elsewhere (``correctness/test_registry.py`` fails when a spec lacks one of its
parts).

Implementations are providers (``kernels.impls``). ``judge(spec, fn, inputs)`` is the one oracle: it calls an
implementation and the reference on the same inputs and compares each output under the spec's tolerance, so
pytest, ``check`` and the report's parity column decide alike.

Importing this package, or any spec module, imports neither torch nor triton: heavy imports happen inside the
functions a spec points to.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Inputs:
    """One call's inputs: ``args``/``kwargs`` in the contract's signature, the ``shape`` they were built from
    and whatever the tolerance needs (``data``: e.g. the ``PagedBatch``)."""

    op: str
    shape: dict
    args: tuple
    kwargs: dict
    data: Any = None


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    reference: str  # "module:attr" of the float64 definition
    kernel: str  # "module:attr" of this project's Triton implementation
    torch: str | None  # "module:attr" of the eager torch baseline, or None
    outputs: tuple[str, ...]
    build: Callable[..., Inputs]  # (shape, device="cpu", seed=0) -> Inputs, poisoned
    call: Callable[[Callable, Inputs], dict]  # (implementation, inputs) -> {output name: tensor or array}
    tolerance: Callable[[Inputs, dict], dict]  # (inputs, reference outputs) -> {output name: atol, per element}
    cost: Callable[[dict], Any]  # shape -> roofline.cost.Cost
    check: dict  # servekernels check: {case name: shape} (interpreter-sized, each feature it names active)
    cases: Callable[[], list]  # the report's catalogue: [roofline.catalogue.Case]
    features: Callable[[tuple, dict], set] = lambda args, kwargs: set()  # what a provider may not support
    # the host hints a ``validate=False`` call of this op takes (``max_seq_len``, ...), from its (args, kwargs):
    # computed once before timing (it may read device values: it is never timed); {} for an op that needs none
    hints: Callable[[tuple, dict], dict] = lambda args, kwargs: {}
    goals: dict = field(default_factory=dict)  # goal name -> (limit, text)
    full_size_count: bool = False  # counted again at (nearly) full size on stride-0 inputs
    # (GPU spec) -> our launcher's keywords that make its launch plan (a KV split, split-K) that GPU's: the report
    # passes them when it models or counts for a GPU; None for an op whose plan does not depend on the GPU
    plan: Callable[[Any], dict] | None = None
    extra_checks: Callable[[Inputs, dict], list] | None = None  # further (name, ok, detail) verdicts
    # every keyword of the reference's signature: "" where it changes the output (some check case sets it and
    # fails when it is ignored: correctness/test_every_keyword_matters.py), else why it cannot
    keywords: dict = field(default_factory=dict)
    # keywords of the reference that are not the contract's (its own modelling aids): no implementation is passed
    # them or must take them
    reference_keywords: tuple[str, ...] = ()

    def reference_fn(self) -> Callable:
        return resolve(self.reference)

    def contract_signature(self) -> inspect.Signature:
        """The contract's signature of this op: the reference's, less ``reference_keywords``."""
        sig = inspect.signature(self.reference_fn())
        return sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in self.reference_keywords],
                           return_annotation=inspect.Signature.empty)

    def kernel_fn(self) -> Callable:
        return resolve(self.kernel)


def resolve(path: str):
    """``"pkg.module:attr"`` -> the object; an import error propagates (a missing kernel is an error)."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@functools.cache
def registry() -> dict[str, OpSpec]:
    """``{op name: OpSpec}`` for every module of this package that defines ``SPEC``, in the modules' order."""
    specs = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if spec is None:
            continue
        if spec.name != info.name:
            raise RuntimeError(f"kernels/ops/{info.name}.py: SPEC.name is {spec.name!r}; an op's module is named "
                               "after the op")
        specs[spec.name] = spec
    return dict(sorted(specs.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


# the order tables list ops in (attention first, as a reader meets them); an op not listed sorts last
ORDER = ("paged_decode", "paged_prefill", "merge_states", "write_kv", "grouped_gemm", "grouped_gemm_int4",
         "grouped_gemm_fp8", "fused_moe")


# the contract's other public names: the quantizers, router and permutation the GEMM and MoE specs build their
# inputs with, and the weight types (property-tested in their own test files; not benchmarked ops)
HELPERS = ("quantize_int4", "dequantize_int4", "quantize_fp8", "quantize_fp8_act", "Int4Weight", "Fp8Weight",
           "route", "moe_permute")


def get(name: str) -> OpSpec:
    ops = registry()
    if name not in ops:
        raise ValueError(f"op: unknown op {name!r} (known: {', '.join(ops)})")
    return ops[name]


# ------------------------------------------------------------------------------------------------ judging

@dataclass
class Verdict:
    """One output of one call, judged at its worst element (largest error / tolerance)."""

    op: str
    output: str
    ok: bool
    max_abs_err: float  # the error at the worst element
    atol: float  # the tolerance at that element
    max_rel_err: float  # max |a - e| / max |e|
    detail: str = ""  # empty when ok; otherwise where and how much the outputs differ
    status: str = ""  # "unsupported: <reason>" for an output the implementation does not return


def compare(op: str, name: str, actual, expected, atol) -> Verdict:
    """``atol`` scalar or per element; pass/fail is ``describe_mismatch`` (NaN patterns included). A
    comparison whose expected output is all zero, or within its own tolerance everywhere, is vacuous and fails:
    a kernel returning zeros must not pass."""
    import numpy as np

    from kernels.reference._arrays import f64
    from kernels.testing.assertions import describe_mismatch, max_rel_err

    a, e = f64(actual), f64(expected)
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), e.shape)
    detail = describe_mismatch(a, e, atol=tol, name=f"{op}.{name}") or ""
    finite = np.isfinite(a) & np.isfinite(e)
    err = np.where(finite, np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0)), 0.0)
    err = np.where(np.isnan(a) != np.isnan(e), np.inf, err)
    if err.size:
        worst = np.unravel_index(int(np.argmax(err / np.maximum(tol, 1e-300))), err.shape)
        worst_err, worst_tol = float(err[worst]), float(tol[worst])
    else:
        worst_err, worst_tol = 0.0, float(np.max(tol, initial=0.0))
    scale = np.abs(np.where(np.isfinite(e), e, 0.0))
    if not detail and e.size and not (scale > tol).any():
        detail = f"{op}.{name}: vacuous comparison (|expected| <= tolerance everywhere)"
    return Verdict(op, name, not detail, worst_err, worst_tol, max_rel_err(a, e), detail)


def expected_outputs(spec: OpSpec, inputs: Inputs) -> dict:
    return spec.call(spec.reference_fn(), inputs)


def judge(spec: OpSpec, fn: Callable, inputs: Inputs, expected: dict | None = None,
          actual: dict | None = None) -> list[Verdict]:
    """``fn`` (any implementation of ``spec``) against the reference on ``inputs``, one Verdict per output."""
    actual = spec.call(fn, inputs) if actual is None else actual
    expected = expected_outputs(spec, inputs) if expected is None else expected
    from kernels.testing.paged import NotProvided

    tols = spec.tolerance(inputs, expected)
    verdicts = []
    for name in spec.outputs:
        if isinstance(actual[name], NotProvided):
            nan = float("nan")
            verdicts.append(Verdict(spec.name, name, True, nan, nan, nan, "", f"unsupported: {actual[name].reason}"))
        else:
            verdicts.append(compare(spec.name, name, _host(actual[name]), expected[name], tols[name]))
    if spec.extra_checks:
        for name, ok, detail in spec.extra_checks(inputs, actual):
            verdicts.append(Verdict(spec.name, name, ok, float("nan"), float("nan"), float("nan"),
                                    "" if ok else detail))
    return verdicts


def _host(x):
    return x.detach().cpu() if hasattr(x, "detach") else x


def timed_judge(spec: OpSpec, fn: Callable, inputs: Inputs) -> tuple[list[Verdict], float]:
    t0 = time.perf_counter()
    verdicts = judge(spec, fn, inputs)
    return verdicts, time.perf_counter() - t0
