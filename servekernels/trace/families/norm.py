"""flashinfer-bench's ``rmsnorm_h{H}`` <-> ``rms_norm``."""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import (Family, Template,
                                               dtype_name, slug)

_RMS = re.compile(r"^rmsnorm_h(\d+)(_[a-z0-9_]+)?$")
RMS_EPS = 1e-6  # flashinfer-bench's and FlashInfer's rmsnorm fix epsilon at 1e-6 (its reference's EPS)

_RMS_REF = '''import torch


@torch.no_grad()
def run(hidden_states, weight):
    # y = x / sqrt(mean(x^2) + 1e-6) * weight, float64 inside, stored in hidden_states' dtype
    x = hidden_states.to(torch.float64)
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * weight.to(torch.float64)
    return y.to(hidden_states.dtype)
'''


class Rmsnorm(Family):
    """flashinfer-bench's ``rmsnorm_h{H}`` (eps fixed at 1e-6, no weight offset) <-> ``rms_norm``."""

    name = "rmsnorm"
    published = ("rmsnorm",)
    templates = (Template("norm", "rmsnorm_trace", dict(batch_size=7), ("hidden_states", "weight")),)

    def template_named(self, template, init):
        return {"hidden_states": init["input"], "weight": init["weight"]}
    op = "rms_norm"

    def covers(self, definition):
        return bool(_RMS.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) - {"hidden_states", "weight"} or "hidden_states" not in definition.inputs:
            return f"inputs {sorted(definition.inputs)}: this adapter maps (hidden_states, weight)"
        return ""

    def _plain(self, inputs):
        kw = inputs.kwargs
        return float(kw.get("eps", 0)) == RMS_EPS and not kw.get("weight_offset") and inputs.args[0].dim() == 2

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        x, w = inputs.args[0], inputs.args[1]
        name = f"rmsnorm_h{x.shape[1]}"
        if (dtype_name(x), dtype_name(w)) != ("bfloat16", "bfloat16"):
            name += f"_{slug(dtype_name(x))}" + (f"_w{slug(dtype_name(w))}" if w.dtype != x.dtype else "")
        return Definition(
            name, "rmsnorm", {"batch_size": Axis("var"), "hidden_size": Axis("const", int(x.shape[1]))},
            {"hidden_states": TensorSpec(["batch_size", "hidden_size"], dtype_name(x)),
             "weight": TensorSpec(["hidden_size"], dtype_name(w))},
            {"output": TensorSpec(["batch_size", "hidden_size"], dtype_name(x))}, _RMS_REF,
            tags=["status:verified", "servekernels", f"servekernels:op={self.op}"],
            description="Root Mean Square Normalization, epsilon fixed at 1e-6 (flashinfer-bench's rmsnorm), "
                        "exported by servekernels from its rms_norm op.")

    def named(self, definition, inputs):
        return {"hidden_states": inputs.args[0], "weight": inputs.args[1]}

    def inputs_from(self, definition, named):
        x = named["hidden_states"]
        shape = {"num_tokens": int(x.shape[0]), "hidden": int(x.shape[1]), "dtype": dtype_name(x), "eps": RMS_EPS}
        return Inputs(self.op, shape, (x, named["weight"]), {"eps": RMS_EPS})

    def implementation(self, definition, solve):
        def impl(x, weight, *, eps, weight_offset=0.0):
            from kernels.ops import Unsupported

            if float(eps) != RMS_EPS or weight_offset:
                raise Unsupported(f"eps: {definition.name} fixes eps at 1e-6 and has no weight offset")
            return solve({"hidden_states": x, "weight": weight})["output"]

        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"]}


