"""The report's bridge to the op registry (``kernels.ops``): a case's inputs, one implementation's call, the judge.

``prepare(op, shape, device, seed, provider)`` returns a ``Prepared``: ``run()`` calls the implementation through
the op spec's ``call`` (named outputs), ``expected()`` the float64 reference on the same inputs, and
``check(actual, expected)`` is ``kernels.testing.judge``: the per-element tolerances the parity suite and
``servekernels check`` use, so the report's parity column decides exactly as they do. A missing kernel is an
import error, never a quiet "not available".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernels.impls import Provider, load
from kernels.ops import get
from kernels.ops.fused_moe import catalogue_routing
from kernels.testing.judge import compare, expected_outputs, judge


@dataclass
class Prepared:
    op: str
    spec: Any  # kernels.ops.OpSpec
    inputs: Any  # kernels.ops.Inputs
    fn: Any  # the implementation's function
    _tolerance: Any = None  # (id(expected), expected, tolerances): see ``tolerance``

    @property
    def args(self) -> tuple:
        return self.inputs.args

    @property
    def kwargs(self) -> dict:
        return self.inputs.kwargs

    def run(self) -> dict:
        return self.spec.call(self.fn, self.inputs)

    def expected(self) -> dict:
        return expected_outputs(self.spec, self.inputs)

    def tolerance(self, expected: dict) -> dict:
        """The op spec's per-element tolerances, computed once per prepared case: at full size the bound is host
        float64 work as large as the reference, and every provider checked against ``expected`` shares it."""
        key = id(expected)
        if self._tolerance is None or self._tolerance[0] != key:
            self._tolerance = (key, expected, self.spec.tolerance(self.inputs, expected))
        return self._tolerance[2]

    def check(self, actual: dict, expected: dict) -> tuple[bool, float, str]:
        """``(ok, max_rel_err, detail)`` over every output the implementation returned."""
        verdicts = judge(self.spec, self.fn, self.inputs, expected=expected, actual=actual)
        return summarize(verdicts)

    def check_raw(self, raw, expected: dict) -> tuple[bool, float, str]:
        """The same for the raw return value of a timed ``fn(*args, **kwargs)`` call (the harness times the
        plain call): a tuple is matched to the spec's outputs in order, a tensor is the first output."""
        values = raw if isinstance(raw, (tuple, list)) else (raw,)
        tols = self.tolerance(expected)
        verdicts = [compare(self.op, name, v.detach().cpu() if hasattr(v, "detach") else v, expected[name], tols[name])
                    for name, v in zip(self.spec.outputs, values)]
        return summarize(verdicts)


def summarize(verdicts) -> tuple[bool, float, str]:
    judged = [v for v in verdicts if not v.status]
    ok = all(v.ok for v in judged) and bool(judged)
    rel = max((v.max_rel_err for v in judged if v.max_rel_err == v.max_rel_err), default=float("nan"))
    # a failure's diagnosis (the worst element in the inputs' terms, the bug its errors fit) leads its detail
    detail = "; ".join((f"{v.op}.{v.output} diagnosis: {v.diagnosis}\n" if v.diagnosis else "") + v.detail
                       for v in judged if v.detail) or ("" if judged else "no output was judged")
    return ok, rel, detail


def kernel(op: str):
    """This project's kernel of ``op`` (the ``servekernels`` provider's function)."""
    return load("servekernels").op(op)


def prepare(op: str, shape: dict, device: str = "cpu", seed: int = 0, provider: Provider | None = None) -> Prepared:
    """Inputs (the op spec's poisoned builder), the implementation's function (``provider``'s, default ours) and
    the judge for one case."""
    spec = get(op)
    return Prepared(op, spec, spec.build(shape, device, seed), (provider or load("servekernels")).op(op))


def routing(tokens: int, experts: int, top_k: int, seed: int = 0):
    return catalogue_routing(tokens, experts, top_k, seed)
