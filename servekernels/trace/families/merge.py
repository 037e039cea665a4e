"""FlashInfer's ``merge_states`` template <-> ``merge_states``."""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import (LN2, Family, Template,
                                               dtype_name, slug)

_MERGE = re.compile(r"^merge_states_h(\d+)_d(\d+)(_[a-z0-9_]+)?$")

_MERGE_REF = '''import math
import torch


@torch.no_grad()
def run(v, s):
    # v [seq_len, num_states, num_heads, head_dim], s [seq_len, num_states, num_heads] base-2 LSEs;
    # merged = sum_i 2^(s_i - s) v_i with s = log2 sum_i 2^s_i; a state with s = -inf adds nothing
    s64 = s.to(torch.float64) * math.log(2.0)
    poisoned = (torch.isnan(s64) | (s64 == float("inf"))).any(dim=1)
    s64 = torch.where(torch.isnan(s64) | (s64 == float("inf")), float("-inf"), s64)
    m = s64.max(dim=1).values
    m = torch.where(torch.isfinite(m), m, 0.0)
    w = torch.exp(s64 - m[:, None])
    total = w.sum(dim=1)
    safe = torch.where((w > 0)[..., None], v.to(torch.float64), 0.0)
    out = torch.where(total[..., None] > 0, (w[..., None] * safe).sum(dim=1) / torch.where(total > 0, total, 1.0)[..., None], 0.0)
    lse = torch.where(total > 0, m + torch.log(torch.where(total > 0, total, 1.0)), float("-inf"))
    out = torch.where(poisoned[..., None], float("nan"), out)
    lse = torch.where(poisoned, float("nan"), lse)
    return out.to(v.dtype), (lse / math.log(2.0)).to(torch.float32)
'''


class MergeStates(Family):
    """FlashInfer's ``merge_states`` template (states on dim 1, base-2 LSE) <-> ``merge_states``."""

    name = "merge_states"
    published = ("merge_states",)
    templates = (Template("cascade", "merge_states_trace", dict(seq_len=5, num_states=3), ("v", "s")),)
    op = "merge_states"

    def covers(self, definition):
        return bool(_MERGE.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) != {"v", "s"} or set(definition.outputs) != {"v_merged", "s_merged"}:
            return "this adapter maps inputs (v, s) and outputs (v_merged, s_merged)"
        return ""

    def _plain(self, inputs):
        return True

    def definition_for(self, spec, case, inputs, expected):
        outs = inputs.args[0]
        h, d = int(outs.shape[2]), int(outs.shape[3])
        dt = dtype_name(outs)
        name = f"merge_states_h{h}_d{d}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"seq_len": Axis("var"), "num_states": Axis("var"), "num_heads": Axis("const", h),
                "head_dim": Axis("const", d)}
        return Definition(
            name, "cascade_merge", axes,
            {"v": TensorSpec(["seq_len", "num_states", "num_heads", "head_dim"], dt),
             "s": TensorSpec(["seq_len", "num_states", "num_heads"], "float32", "base-2 LSE of each state")},
            {"v_merged": TensorSpec(["seq_len", "num_heads", "head_dim"], dt),
             "s_merged": TensorSpec(["seq_len", "num_heads"], "float32", "base-2 LSE")}, _MERGE_REF,
            tags=["servekernels", f"servekernels:op={self.op}"],
            description="Merge attention states over disjoint key sets (FlashInfer's merge_states), exported by "
                        "servekernels from its merge_states op; a state with LSE -inf contributes nothing.")

    def named(self, definition, inputs):
        outs, lses = inputs.args
        return {"v": outs.transpose(0, 1).contiguous(), "s": (lses / LN2).transpose(0, 1).contiguous()}

    def inputs_from(self, definition, named):
        v, s = named["v"], named["s"]
        shape = {"num_states": int(v.shape[1]), "num_tokens": int(v.shape[0]), "num_heads": int(v.shape[2]),
                 "head_dim": int(v.shape[3]), "dtype": dtype_name(v)}
        return Inputs(self.op, shape, (v.transpose(0, 1).contiguous(), (s * LN2).transpose(0, 1).contiguous()), {})

    def implementation(self, definition, solve):
        def impl(outs, lses):
            got = solve({"v": outs.transpose(0, 1).contiguous(), "s": (lses / LN2).transpose(0, 1).contiguous()})
            return got["v_merged"], got["s_merged"] * LN2

        return impl

    def theirs(self, definition, outputs):
        return {"v_merged": outputs["out"], "s_merged": outputs["lse"] / LN2}


