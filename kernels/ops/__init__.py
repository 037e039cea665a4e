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

This package also holds what every consumer of an op speaks: a catalogue ``Case``, each op's declared shape
schema (``OpSpec.shape``: the keys of its shape dicts, checked wherever a shape is made), the judging
vocabulary (``Unsupported``, ``NotProvidedError``, ``NotProvided``, ``Verdict``) and the real models' shapes
(``kernels.ops.models``). It imports nothing else of the library, so every layer above may import it.

Implementations are providers (``kernels.impls``). ``kernels.testing.judge.judge(spec, fn, inputs)`` is the one
oracle: it calls an implementation and the reference on the same inputs and compares each output under the
spec's tolerance, so pytest, ``check`` and the report's parity column decide alike.

Importing this package, or any spec module, imports neither torch nor triton: heavy imports happen inside the
functions a spec points to.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable


class Unsupported(Exception):
    """A provider declines a case: ``str(exc)`` starts with the feature (``"fp8_kv: ..."``)."""


class NotProvidedError(LookupError):
    """The provider has no function for this op."""


class NotProvided:
    """An output an implementation does not return (vLLM's attention has no LSE), with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self):
        return f"not provided: {self.reason}"


@dataclass(frozen=True)
class ShapeSchema:
    """The keys of one op's shape dicts (a ``Case``'s ``shape`` and ``small``, ``OpSpec.check``'s values), each
    with its meaning: ``required`` keys every shape has, ``optional`` ones a shape may add."""

    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)

    def validate(self, shape: dict, where: str) -> dict:
        """``shape`` itself; a ``ValueError`` naming ``where`` and the keys when one is missing or unknown."""
        missing = [k for k in self.required if k not in shape]
        unknown = [k for k in shape if k not in self.required and k not in self.optional]
        if missing or unknown:
            raise ValueError(f"{where}: shape " + "; ".join(
                part for part in (f"lacks {missing}" if missing else "",
                                  f"has keys its op does not declare {unknown}" if unknown else "") if part))
        return shape


@dataclass
class Case:
    """One case of the report's catalogue: ``shape`` is the full size (what the roofline models and a GPU
    measures), ``small`` the same model at an interpreter-sized length (counted traffic and parity); both follow
    the op's ``OpSpec.shape``."""

    op: str
    name: str
    shape: dict
    small: dict
    quick: bool = False
    goal: str = ""  # which goal this case tests ("decode_traffic", "gemm_traffic", "prefill_fa2", "decode_bw")
    notes: list = field(default_factory=list)
    tracked: bool = False  # asv tracks its counted traffic (with every quick case); its op spec says so
    # False: counted at its small shape only, scaled to full size by the counted/minimum ratio, even for an op
    # counted again at full size (``OpSpec.full_size_count``): a full-size count that would not fit this host
    full_count: bool = True

    def __post_init__(self):
        spec = registry().get(self.op)
        if spec is None:
            raise ValueError(f"case {self.name}: unknown op {self.op!r} (known: {', '.join(registry())})")
        spec.shape.validate(self.shape, f"case {self.name}")
        spec.shape.validate(self.small, f"case {self.name} (small)")


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
class Invariance:
    """A batch-invariance or determinism property of an op, run by ``kernels/testing/invariance.py``: ``check`` is
    "module:function" of ``function(impl, mode=..., op=<the op>, **args) -> Verdict``; ``modes`` those it is judged
    in ("default" always: what a user gets), ``promised`` those in which this project's kernels promise it."""

    name: str  # as check --invariance and the report list it
    check: str
    modes: tuple[str, ...] = ("default", "invariant")
    promised: tuple[str, ...] = ("invariant",)
    args: tuple[tuple[str, Any], ...] = ()  # further keywords of ``check``, as (name, value) pairs


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
    cases: Callable[[], list]  # the report's catalogue: [Case]
    shape: ShapeSchema  # the keys of this op's shape dicts
    features: Callable[[tuple, dict], set] = lambda args, kwargs: set()  # what a provider may not support
    # the host hints a ``validate=False`` call of this op takes (``max_seq_len``, ...), from its (args, kwargs):
    # computed once before timing (it may read device values: it is never timed); {} for an op that needs none
    hints: Callable[[tuple, dict], dict] = lambda args, kwargs: {}
    goals: dict = field(default_factory=dict)  # goal name -> (limit, text)
    full_size_count: bool = False  # counted again at (nearly) full size on stride-0 inputs
    # (GPU spec) -> our launcher's keywords that make its launch plan (a KV split, split-K) that GPU's: the report
    # passes them when it models or counts for a GPU; None for an op whose plan does not depend on the GPU
    plan: Callable[[Any], dict] | None = None
    # further verdicts: (name, ok, detail) or (name, ok, detail, summary: what a passing one found, e.g. "empty
    # (2 rows: out 0, LSE -inf as required)")
    extra_checks: Callable[[Inputs, dict], list] | None = None
    # (inputs, output name, actual, expected, tolerance) -> a failing output's diagnosis: the worst element in the
    # input's own terms and the planted structures the wrong elements follow (``kernels/testing/diagnosis.py``)
    diagnose: Callable[..., str] | None = None
    # every keyword of the reference's signature: "" where it changes the output (some check case sets it and
    # fails when it is ignored: correctness/test_every_keyword_matters.py), else why it cannot
    keywords: dict = field(default_factory=dict)
    # keyword -> the keywords meaningless without it (``topk_groups`` without ``num_groups``): an implementation
    # that ignores the keyword ignores them too (correctness/test_every_keyword_matters.py drops them with it)
    partners: dict = field(default_factory=dict)
    # keywords of the reference that are not the contract's (its own modelling aids): no implementation is passed
    # them or must take them
    reference_keywords: tuple[str, ...] = ()
    # contract keywords an implementation may lack (added to the contract after implementations were written, e.g.
    # ``sinks``): a user's function that does not take one declines the feature of the same name (reported as
    # unsupported with the reason, never as passed) instead of failing to load
    optional_keywords: tuple[str, ...] = ()
    # the integrity rules (kernels/testing/integrity.py): each output's dtype by the contract, from the inputs
    # ({output: torch dtype}; None for an op whose outputs are its in-place arguments), the positional arguments
    # it writes in place (not digested), and a shape drawn per run beyond the ``check`` shapes
    # (random.Random -> shape; the ``check`` consumer runs it and calls it again on fresh values)
    out_dtypes: Callable[[Inputs], dict] | None = None
    writes: tuple[int, ...] = ()
    draw: Callable[[Any], dict] | None = None

    # What the report, its figures and the launch-path tests ask of an op. Each has a default, so a new op
    # declares only those that differ; the consumers loop over the registry and know no op.
    # (shape, big, stride0) -> (args, kwargs): inputs at the case's full shape that cost (almost) no memory, every
    # large tensor from ``big(shape, dtype)`` (stride0=True: stride-0 expansions, for grids only: nothing may
    # execute on them; False: real but uninitialised, for counting); None: the op's own ``build`` at full size
    full_inputs: Callable[[dict, Callable, bool], tuple] | None = None
    # shape -> the shape with per-program work capped for counting at full size (``full_size_count``), or None
    # when nothing needs capping
    medium_shape: Callable[[dict], dict | None] = lambda shape: None
    # how a capped count scales to full size: "ratio" (counted / minimum at the capped shape, times the full
    # minimum) or "k_by_launch" (a GEMM: each launch's K-proportional traffic along K, its split-K plan kept)
    capped_scaling: str = "ratio"
    count_cap: str = ""  # the report's words for what ``medium_shape`` caps ("context <= 2048"); "": full length
    row_shape: Callable[[dict], dict] = dict  # shape -> the summary a report row prints (default: all of it)
    fa2_bytes: Callable[[dict], float] | None = None  # shape -> the FlashAttention-2 traffic model, where one applies
    style: tuple[str, str] = ("o", "k")  # the roofline figure's (marker, colour) for this op
    # report row shape -> the title of a report note listing the case's programs at full size (a launch plan worth
    # seeing, e.g. a split-KV decode of one long sequence), or None: the case is not listed
    programs_note: Callable[[dict], str | None] = lambda shape: None
    invariance: tuple[Invariance, ...] = ()  # its batch-invariance and determinism properties
    # small calls of this op for the launch-path tests (``correctness/launch_cases.py``): {variant name ("" for
    # the plain one): device -> (args, kwargs, hints)}, the hints a ``validate=False`` call takes
    launch_cases: dict = field(default_factory=dict)
    validation_reads_device: bool = True  # False: its input checks read no device value (validate=True reads none)
    writes_args: tuple[int, ...] = ()  # positions of the arguments it writes in place (a replay resets them)

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
        for case, shape in spec.check.items():
            spec.shape.validate(shape, f"kernels/ops/{info.name}.py: check case {case}")
        specs[spec.name] = spec
    return dict(sorted(specs.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


# the order tables list ops in (attention first, as a reader meets them); an op not listed sorts last
ORDER = ("paged_decode", "paged_prefill", "mla_decode", "merge_states", "write_kv", "grouped_gemm",
         "grouped_gemm_int4", "grouped_gemm_fp8", "route", "fused_moe", "rms_norm", "fused_add_rms_norm",
         "rms_norm_quant_fp8", "rotary_embedding")


# the contract's other public names: the quantizers and permutation the GEMM and MoE specs build their inputs
# with, and the weight types (property-tested in their own test files; not benchmarked ops)
HELPERS = ("quantize_int4", "dequantize_int4", "quantize_fp8", "quantize_fp8_act", "Int4Weight", "Fp8Weight",
           "quantize_mxfp4", "dequantize_mxfp4", "Mxfp4Weight",
           "moe_permute")


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
    diagnosis: str = ""  # on a failure: the worst element in the input's terms and the structure of the errors
    summary: str = ""  # a verdict without numbers (an extra check): what it found, printed in their place
