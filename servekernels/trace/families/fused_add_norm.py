"""flashinfer-bench's ``fused_add_rmsnorm_h{H}`` (FlashInfer's ``fused_add_rmsnorm``) <-> ``fused_add_rms_norm``.

Mapping rules:

- inputs ``hidden_states [batch_size, H]`` -> ``x``, ``residual [batch_size, H]`` -> ``residual``, ``weight [H]``
  -> ``weight``; output ``output`` (hidden_states' dtype) <- ``out``;
- the updated residual: flashinfer-bench publishes two forms. Most definitions (h2048, h4096, h7168...) return
  ``output`` alone and their reference leaves ``residual`` untouched (FlashInfer's API updates it in place; their
  evaluator grades only returned outputs); h3584 and h8192 also return ``updated_residual`` (FlashInfer's
  template dump names it ``residual``, in place). Where the Definition has that output, the Solution's value is
  the contract's ``residual`` and is judged (within two roundings of the sum in residual's dtype); where it has
  none, the Definition does not ask for it: the adapter writes ``residual + x`` (float64, rounded once) into the
  contract's residual itself and only ``output`` is the Solution's. Either way the Solution gets a copy of the
  residual, so an in-place write it makes is not mistaken for the update;
- the norm: the contract normalises the new residual as stored (the value the next layer's add reads);
  flashinfer-bench's and FlashInfer's references normalise the float32 sum before that rounding. Both are within
  the contract's output tolerance, which is widened by twice the residual's rounding for exactly this;
- eps is a constant of the Definition (``norm.fixed_eps``: its reference's ``EPS``, else its description); the
  contract's ``fused_add_rms_norm`` has no weight offset, so Gemma's ``gemma_fused_add_rmsnorm`` ((1 + weight))
  is not judged here (``why_not`` of no family: its name is not covered);
- export: ``fused_add_rmsnorm_h{H}`` with both outputs (``output``, ``updated_residual``), eps in the reference,
  ``_eps<eps>`` where eps is not the one flashinfer-bench publishes the name with, dtype suffixes as ``rmsnorm``'s
  (``_r<dtype>`` for a residual in another dtype than hidden_states').
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import Family, Template, dtype_name
from servekernels.trace.families.norm import FLOAT_DTYPES, dtype_suffix, eps_name, fixed_eps

_FUSED = re.compile(r"^fused_add_rmsnorm_h(\d+)(_[a-z0-9_]+)?$")
_INPUTS = ("hidden_states", "residual", "weight")
RESIDUAL_OUT = ("updated_residual", "residual")  # flashinfer-bench's name, FlashInfer's template dump's

_FUSED_REF = '''import torch


@torch.no_grad()
def run(hidden_states, residual, weight):
    # updated_residual = hidden_states + residual (float64, stored once in residual's dtype); output = the norm
    # of updated_residual as stored: r / sqrt(mean(r^2) + EPS) * weight, float64 inside, in hidden_states' dtype
    EPS = {eps!r}
    updated = (hidden_states.to(torch.float64) + residual.to(torch.float64)).to(residual.dtype)
    r = updated.to(torch.float64)
    y = r * torch.rsqrt(r.pow(2).mean(dim=-1, keepdim=True) + EPS) * weight.to(torch.float64)
    return y.to(hidden_states.dtype), updated
'''


def residual_output(definition) -> str | None:
    """The Definition's output holding the updated residual, or None (the output-only form)."""
    outputs = getattr(definition, "outputs", None) or {}  # a template's stub has none: output alone
    return next((n for n in RESIDUAL_OUT if n in outputs), None)


class FusedAddRmsnorm(Family):
    """flashinfer-bench's ``fused_add_rmsnorm_h{H}`` <-> ``fused_add_rms_norm`` (the module docstring)."""

    name = "fused_add_rmsnorm"
    op = "fused_add_rms_norm"
    published = ("fused_add_rmsnorm",)
    templates = (Template("norm", "fused_add_rmsnorm_trace", dict(batch_size=7, hidden_size=512), _INPUTS),)

    def template_named(self, template, init):
        return {"hidden_states": init["input"], "residual": init["residual"], "weight": init["weight"]}

    def covers(self, definition):
        return bool(_FUSED.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) != set(_INPUTS):
            return f"inputs {sorted(definition.inputs)}: this adapter maps (hidden_states, residual, weight)"
        extra = set(definition.outputs) - {"output", *RESIDUAL_OUT}
        if "output" not in definition.outputs or extra or len(definition.outputs) > 2:
            return (f"outputs {sorted(definition.outputs)}: this adapter maps 'output' and optionally the updated "
                    f"residual ({' or '.join(RESIDUAL_OUT)})")
        bad = [n for n, s in definition.inputs.items() if s.dtype not in FLOAT_DTYPES]
        if bad:
            return f"inputs {bad}: dtype not in {FLOAT_DTYPES}"
        return fixed_eps(definition)[1]

    def _plain(self, inputs):
        return inputs.args[0].dim() == 2

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        x, res, w = inputs.args
        h, eps = int(x.shape[1]), float(inputs.kwargs["eps"])
        name = f"fused_add_rmsnorm_h{h}" + dtype_suffix(x, r=res, w=w) + eps_name(self.name, h, eps)
        rows = ["batch_size", "hidden_size"]
        return Definition(
            name, "rmsnorm", {"batch_size": Axis("var"), "hidden_size": Axis("const", h)},
            {"hidden_states": TensorSpec(rows, dtype_name(x)), "residual": TensorSpec(rows, dtype_name(res)),
             "weight": TensorSpec(["hidden_size"], dtype_name(w))},
            {"output": TensorSpec(rows, dtype_name(x), "RMSNorm of updated_residual as stored"),
             "updated_residual": TensorSpec(rows, dtype_name(res), "hidden_states + residual, in residual's dtype")},
            _FUSED_REF.format(eps=eps),
            tags=["status:verified", "fused", "servekernels", f"servekernels:op={self.op}"],
            description=f"Fused Add + RMSNorm. Epsilon is fixed at {eps!r}. Exported by servekernels from its "
                        "fused_add_rms_norm op: the norm is of the updated residual as stored in its dtype.")

    def named(self, definition, inputs):
        x, res, w = inputs.args
        return {"hidden_states": x, "residual": res, "weight": w}

    def inputs_from(self, definition, named):
        eps, why = fixed_eps(definition)
        if eps is None:
            raise ValueError(f"{definition.name}: {why}")
        x, res, w = (named[n] for n in _INPUTS)
        shape = {"num_tokens": int(x.shape[0]), "hidden": int(x.shape[1]), "dtype": dtype_name(x), "eps": eps,
                 "residual_dtype": dtype_name(res), "weight_dtype": dtype_name(w)}
        return Inputs(self.op, shape, (x, res, w), {"eps": eps})

    def implementation(self, definition, solve):
        want, _ = fixed_eps(definition)
        res_out = residual_output(definition)

        def impl(x, residual, weight, *, eps):
            import torch

            from kernels.ops import Unsupported

            if float(eps) != want:
                raise Unsupported(f"eps: {definition.name} fixes eps at {want}; called with eps {eps}")
            got = solve({"hidden_states": x, "residual": residual.clone(), "weight": weight})
            if res_out is None:  # the output-only form: the Definition does not ask for the update
                residual.copy_((residual.to(torch.float64) + x.to(torch.float64)).to(residual.dtype))
            else:
                new = got[res_out]
                if not isinstance(new, torch.Tensor) or new.dtype != residual.dtype or new.shape != residual.shape:
                    raise ValueError(f"{res_out}: expected a {residual.dtype} tensor of shape "
                                     f"{tuple(residual.shape)}, got {getattr(new, 'dtype', type(new).__name__)} "
                                     f"{tuple(getattr(new, 'shape', ()))}")
                residual.copy_(new)
            return got["output"]

        return impl

    def theirs(self, definition, outputs):
        out = {"output": outputs["out"]}
        res_out = residual_output(definition)
        if res_out is not None and "residual" in outputs:
            out[res_out] = outputs["residual"]
        return out
