"""flashinfer-bench's ``rmsnorm_h{H}`` <-> ``rms_norm``; FlashInfer's ``gemma_rmsnorm`` <-> ``rms_norm`` with
``weight_offset`` 1.

Mapping rules:

- inputs ``hidden_states [batch_size, H]`` -> ``x``, ``weight [H]`` -> ``weight``; output ``output`` (x's dtype)
  <- ``out``;
- eps is a constant of the Definition, not an input: it is read from its reference (``EPS = 1e-5``), else from
  its description ("Epsilon is fixed at 1e-5"); a Definition that states neither (or two different values) is
  not judged. flashinfer-bench fixes 1e-6 for most hidden sizes and 1e-5 for Llama's (4096, 8192, 16384) and
  a few others (``PUBLISHED_EPS``);
- Gemma's ``(1 + weight)`` scaling is ``weight_offset=1`` (``gemma_rmsnorm_h{H}``, FlashInfer's ``gemma_rmsnorm``);
  plain ``rmsnorm`` is offset 0;
- export: a check case becomes ``rmsnorm_h{H}`` (``gemma_rmsnorm_h{H}``) with its eps written into the reference;
  where its eps is not the one flashinfer-bench publishes that name with (1e-6 for a size it does not publish)
  the name gets ``_eps<eps>`` (the judge matches our cases, and fits drawn shapes, to a Definition by name); x's
  dtype other than bfloat16 and a weight dtype other than x's are suffixes.
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import Family, Template, dtype_name, slug

_NUM = r"([0-9][0-9.]*(?:[eE][-+]?[0-9]+)?)"
_EPS_REF = re.compile(r"\bEPS\s*=\s*" + _NUM)
_EPS_DESC = re.compile(r"[Ee]psilon(?: is)?(?: fixed)?(?: at| of| =)?\s+" + _NUM)
FLOAT_DTYPES = ("bfloat16", "float16", "float32")

# flashinfer-bench's published eps per hidden size (the ``EPS`` of each definition's reference, fetched from
# flashinfer_trace/definitions/rmsnorm/ of github.com/flashinfer-ai/flashinfer-bench before the dataset moved)
PUBLISHED_EPS = {
    "rmsnorm": {128: 1e-6, 512: 1e-6, 1536: 1e-6, 2048: 1e-6, 2560: 1e-6, 2880: 1e-5, 3072: 1e-6, 3584: 1e-6,
                4096: 1e-5, 5120: 1e-6, 5376: 1e-6, 6144: 1e-5, 7168: 1e-6, 8192: 1e-5, 16384: 1e-5},
    "gemma_rmsnorm": {256: 1e-6, 2048: 1e-6},
    "fused_add_rmsnorm": {2048: 1e-6, 2560: 1e-6, 2880: 1e-5, 3072: 1e-6, 3584: 1e-6, 4096: 1e-5, 5120: 1e-6,
                          5376: 1e-6, 6144: 1e-5, 7168: 1e-6, 8192: 1e-5, 16384: 1e-5},
}


def fixed_eps(definition) -> tuple[float | None, str]:
    """``(eps, "")``: the epsilon a norm Definition fixes (its reference's ``EPS = x``, else its description's
    "epsilon is fixed at x"); ``(None, why)`` when it states none or two that differ."""
    ref = _EPS_REF.findall(getattr(definition, "reference", "") or "")
    desc = _EPS_DESC.findall(getattr(definition, "description", "") or "")
    vals = {float(v.rstrip(".")) for v in ref[:1] + desc[:1]}
    if not vals:
        return None, "no eps: neither its reference (EPS = ...) nor its description states the epsilon it fixes"
    if len(vals) > 1:
        return None, f"its reference and description state different eps ({sorted(vals)})"
    return vals.pop(), ""


DEFAULT_EPS = 1e-6  # FlashInfer's templates' and most of flashinfer-bench's


def eps_name(prefix: str, hidden: int, eps: float) -> str:
    """``""`` where eps is the one flashinfer-bench publishes ``<prefix>_h<hidden>`` with (1e-6 for a size it does
    not publish), else ``_eps<eps>``: the judge matches our cases (and fits a drawn shape) to a Definition by name."""
    published = PUBLISHED_EPS.get(prefix, {}).get(hidden, DEFAULT_EPS)
    return "" if published == float(eps) else f"_eps{slug(repr(float(eps)))}"


def dtype_suffix(x, **others) -> str:
    """x's dtype where it is not bfloat16, then ``_<key><dtype>`` for each other tensor whose dtype differs."""
    out = "" if x.dtype.is_floating_point and dtype_name(x) == "bfloat16" else f"_{slug(dtype_name(x))}"
    for key, t in others.items():
        if t.dtype != x.dtype:
            out += f"_{key}{slug(dtype_name(t))}"
    return out


_RMS_REF = '''import torch


@torch.no_grad()
def run(hidden_states, weight):
    # y = x / sqrt(mean(x^2) + EPS) * ({offset}weight), float64 inside, stored in hidden_states' dtype
    EPS = {eps!r}
    x = hidden_states.to(torch.float64)
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS) * ({offset}weight.to(torch.float64))
    return y.to(hidden_states.dtype)
'''


class Rmsnorm(Family):
    """flashinfer-bench's ``rmsnorm_h{H}`` (``gemma=True``: ``gemma_rmsnorm_h{H}``, weight offset 1) <->
    ``rms_norm``; eps read from the Definition."""

    op = "rms_norm"

    def __init__(self, gemma: bool = False):
        self.gemma = gemma
        self.offset = 1.0 if gemma else 0.0
        self.name = "gemma_rmsnorm" if gemma else "rmsnorm"
        self.published = (self.name,)
        self.templates = (Template("norm", f"{self.name}_trace", dict(batch_size=7), ("hidden_states", "weight")),)
        self._re = re.compile(rf"^{self.name}_h(\d+)(_[a-z0-9_]+)?$")

    def template_named(self, template, init):
        return {"hidden_states": init["input"], "weight": init["weight"]}

    def covers(self, definition):
        return bool(self._re.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) != {"hidden_states", "weight"}:
            return f"inputs {sorted(definition.inputs)}: this adapter maps (hidden_states, weight)"
        if "output" not in definition.outputs or len(definition.outputs) != 1:
            return f"outputs {sorted(definition.outputs)}: this adapter maps one output named 'output'"
        bad = [n for n, s in definition.inputs.items() if s.dtype not in FLOAT_DTYPES]
        if bad:
            return f"inputs {bad}: dtype not in {FLOAT_DTYPES} (a quantized norm is another op)"
        return fixed_eps(definition)[1]

    def _plain(self, inputs):
        kw = inputs.kwargs
        return float(kw.get("weight_offset", 0.0)) == self.offset and inputs.args[0].dim() == 2

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        x, w = inputs.args[0], inputs.args[1]
        h, eps = int(x.shape[1]), float(inputs.kwargs["eps"])
        name = f"{self.name}_h{h}" + dtype_suffix(x, w=w) + eps_name(self.name, h, eps)
        what = "Gemma-style RMSNorm, y = x / rms(x) * (1 + weight)" if self.gemma else "Root Mean Square Normalization"
        return Definition(
            name, "rmsnorm", {"batch_size": Axis("var"), "hidden_size": Axis("const", h)},
            {"hidden_states": TensorSpec(["batch_size", "hidden_size"], dtype_name(x)),
             "weight": TensorSpec(["hidden_size"], dtype_name(w))},
            {"output": TensorSpec(["batch_size", "hidden_size"], dtype_name(x))},
            _RMS_REF.format(eps=eps, offset="1.0 + " if self.gemma else ""),
            tags=["status:verified", "servekernels", f"servekernels:op={self.op}"],
            description=f"{what}. Epsilon is fixed at {eps!r}. Exported by servekernels from its rms_norm op.")

    def named(self, definition, inputs):
        return {"hidden_states": inputs.args[0], "weight": inputs.args[1]}

    def inputs_from(self, definition, named):
        eps, why = fixed_eps(definition)
        if eps is None:
            raise ValueError(f"{definition.name}: {why}")
        x = named["hidden_states"]
        shape = {"num_tokens": int(x.shape[0]), "hidden": int(x.shape[1]), "dtype": dtype_name(x), "eps": eps,
                 "weight_dtype": dtype_name(named["weight"])}
        kwargs = {"eps": eps}
        if self.gemma:
            shape["weight_offset"] = kwargs["weight_offset"] = self.offset
        return Inputs(self.op, shape, (x, named["weight"]), kwargs)

    def implementation(self, definition, solve):
        want, _ = fixed_eps(definition)

        def impl(x, weight, *, eps, weight_offset=0.0):
            from kernels.ops import Unsupported

            if float(eps) != want or float(weight_offset) != self.offset:
                raise Unsupported(f"eps: {definition.name} fixes eps at {want} and weight offset {self.offset}; "
                                  f"called with eps {eps}, weight_offset {weight_offset}")
            return solve({"hidden_states": x, "weight": weight})["output"]

        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"]}
