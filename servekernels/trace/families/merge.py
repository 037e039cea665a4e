"""FlashInfer's ``merge_states``, ``merge_state`` and ``merge_state_in_place`` templates <-> ``merge_states``.

Mapping rules (all three): FlashInfer's LSEs are base 2, the contract's natural log (``LN2``); an empty state
(LSE ``-inf``) contributes nothing, whatever its values hold, NaN included (the contract; FlashInfer's own
template references compute ``0 * v`` there: see ``correctness/test_trace_attention.py``).

- ``merge_states_h{H}_d{D}``: ``v`` ``[seq_len, num_states, H, D]``, ``s`` ``[seq_len, num_states, H]`` <-> the
  contract's ``outs`` ``[S, num_tokens, H, D]``, ``lses`` ``[S, num_tokens, H]``: states on dim 1 <-> dim 0;
  every check case exported;
- ``merge_state_h{H}_d{D}``: two states ``(v_a, s_a)``, ``(v_b, s_b)`` ``[seq_len, H(, D)]`` <-> ``merge_states``
  with S = 2 (stacked on dim 0), outputs ``v_merged``, ``s_merged``; the S = 2 check cases exported;
- ``merge_state_in_place_h{H}_d{D}``: ``(v, s)`` merged with ``(v_other, s_other)`` into ``v``, ``s`` (outputs
  named like the inputs: FlashInfer's fi_trace dumps; flashinfer-bench's schema forbids the overlap, so none is
  exported), optional ``mask [seq_len]``: a row with mask False keeps ``(v, s)``, exactly the contract's merge
  with ``s_other = -inf`` on that row (a single state's merge is the state itself), which ``inputs_from`` writes;
  ``named`` hands such a row back as mask False with a loud ``s_other`` (its value is then irrelevant by the
  definition, and a Solution that ignores the mask is far off).
"""
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
    return _merge(v, s)


def _merge(v, s):
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
    den = torch.where(total > 0, total, 1.0)
    out = torch.where(total[..., None] > 0, (w[..., None] * safe).sum(dim=1) / den[..., None], 0.0)
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




_PAIR = re.compile(r"^merge_state_h(\d+)_d(\d+)(_[a-z0-9_]+)?$")
_IN_PLACE = re.compile(r"^merge_state_in_place_h(\d+)_d(\d+)(_[a-z0-9_]+)?$")

_PAIR_RUN = '''

@torch.no_grad()
def run(v_a, s_a, v_b, s_b):
    return _merge(torch.stack([v_a, v_b], dim=1), torch.stack([s_a, s_b], dim=1))
'''


class MergeState(Family):
    """FlashInfer's ``merge_state`` template (two states, base-2 LSE) <-> ``merge_states`` with S = 2."""

    name = "merge_state"
    published = ("merge_state",)
    templates = (Template("cascade", "merge_state_trace", dict(seq_len=5, num_heads=4, head_dim=64),
                          ("v_a", "s_a", "v_b", "s_b")),)
    op = "merge_states"

    def covers(self, definition):
        return bool(_PAIR.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) != {"v_a", "s_a", "v_b", "s_b"} or \
                set(definition.outputs) != {"v_merged", "s_merged"}:
            return "this adapter maps inputs (v_a, s_a, v_b, s_b) and outputs (v_merged, s_merged)"
        return ""

    def _plain(self, inputs):
        return int(inputs.args[0].shape[0]) == 2

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        outs = inputs.args[0]
        h, d = int(outs.shape[2]), int(outs.shape[3])
        dt = dtype_name(outs)
        name = f"merge_state_h{h}_d{d}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"seq_len": Axis("var"), "num_heads": Axis("const", h), "head_dim": Axis("const", d)}
        v = TensorSpec(["seq_len", "num_heads", "head_dim"], dt)
        lse = TensorSpec(["seq_len", "num_heads"], "float32", "base-2 LSE")
        return Definition(
            name, "cascade_merge", axes, {"v_a": v, "s_a": lse, "v_b": v, "s_b": lse},
            {"v_merged": v, "s_merged": lse}, _MERGE_REF.replace("def run(v, s):\n    return _merge(v, s)\n\n\n", "")
            + _PAIR_RUN, tags=["servekernels", f"servekernels:op={self.op}"],
            description="Merge two attention states over disjoint key sets (FlashInfer's merge_state), exported "
                        "by servekernels from its merge_states op; a state with LSE -inf contributes nothing.")

    def named(self, definition, inputs):
        outs, lses = inputs.args
        if int(outs.shape[0]) != 2:
            raise ValueError(f"outs: {definition.name} merges 2 states, got {int(outs.shape[0])}")
        return {"v_a": outs[0], "s_a": lses[0] / LN2, "v_b": outs[1], "s_b": lses[1] / LN2}

    def inputs_from(self, definition, named):
        import torch

        v = torch.stack([named["v_a"], named["v_b"]])
        shape = {"num_states": 2, "num_tokens": int(v.shape[1]), "num_heads": int(v.shape[2]),
                 "head_dim": int(v.shape[3]), "dtype": dtype_name(v)}
        return Inputs(self.op, shape, (v, torch.stack([named["s_a"], named["s_b"]]) * LN2), {})

    def implementation(self, definition, solve):
        fam = self

        def impl(outs, lses):
            from kernels.ops import Unsupported

            if int(outs.shape[0]) != 2:
                raise Unsupported(f"num_states: {definition.name} merges 2 states")
            got = solve(fam.named(definition, Inputs(fam.op, {}, (outs, lses), {})))
            return got["v_merged"], got["s_merged"] * LN2

        return impl

    def theirs(self, definition, outputs):
        return {"v_merged": outputs["out"], "s_merged": outputs["lse"] / LN2}


class MergeStateInPlace(Family):
    """FlashInfer's ``merge_state_in_place`` template (``(v, s)`` updated in place, optional row mask) <->
    ``merge_states`` with S = 2."""

    name = "merge_state_in_place"
    published = ("merge_state_in_place",)
    templates = (Template("cascade", "merge_state_in_place_trace", dict(seq_len=6, num_heads=4, head_dim=64),
                          ("v", "s", "v_other", "s_other", "mask")),)
    op = "merge_states"

    def template_named(self, template, init):
        import torch

        mask = torch.arange(init["v"].shape[0]) % 3 != 1  # rows 1, 4 keep (v, s)
        return {**init, "mask": mask}

    def covers(self, definition):
        return bool(_IN_PLACE.match(definition.name))

    def why_not(self, definition):
        need = {"v", "s", "v_other", "s_other"}
        if not need <= set(definition.inputs) or set(definition.outputs) != {"v", "s"}:
            return "this adapter maps inputs (v, s, v_other, s_other[, mask]) and outputs (v, s)"
        extra = set(definition.inputs) - need - {"mask"}
        if extra:
            return f"inputs {sorted(extra)} have no meaning in the merge_states contract"
        return ""

    def _plain(self, inputs):
        return False  # in-place outputs named like inputs: flashinfer-bench's schema rejects them, none exported

    def definition_for(self, spec, case, inputs, expected):
        return None

    def named(self, definition, inputs):
        outs, lses = inputs.args
        if int(outs.shape[0]) != 2:
            raise ValueError(f"outs: {definition.name} merges 2 states, got {int(outs.shape[0])}")
        import torch

        s, s_other, mask = lses[0] / LN2, lses[1] / LN2, None
        if "mask" in definition.inputs:
            # a row whose other state is empty for every head keeps (v, s): handed over as mask False, its
            # s_other made loud (2^16 times v's weight), so a Solution that ignores the mask is far off
            mask = ~torch.isneginf(s_other).all(dim=-1)
            loud = torch.where(torch.isfinite(s), s, 0.0) + 16.0
            s_other = torch.where(mask[:, None], s_other, loud)
        # clones: the Solution writes v and s in place, the contract's inputs must stay as they were
        return {"v": outs[0].clone(), "s": s.contiguous(), "v_other": outs[1], "s_other": s_other, "mask": mask}

    def inputs_from(self, definition, named):
        import torch

        s_other = named["s_other"].to(torch.float32)
        mask = named.get("mask")
        if mask is not None:
            s_other = torch.where(mask.to(torch.bool)[:, None], s_other, float("-inf"))  # that row keeps (v, s)
        v = torch.stack([named["v"], named["v_other"]])
        shape = {"num_states": 2, "num_tokens": int(v.shape[1]), "num_heads": int(v.shape[2]),
                 "head_dim": int(v.shape[3]), "dtype": dtype_name(v)}
        return Inputs(self.op, shape, (v, torch.stack([named["s"].to(torch.float32), s_other]) * LN2), {})

    def implementation(self, definition, solve):
        fam = self

        def impl(outs, lses):
            from kernels.ops import Unsupported

            if int(outs.shape[0]) != 2:
                raise Unsupported(f"num_states: {definition.name} merges 2 states")
            got = solve(fam.named(definition, Inputs(fam.op, {}, (outs, lses), {})))
            return got["v"], got["s"] * LN2

        return impl

    def theirs(self, definition, outputs):
        return {"v": outputs["out"], "s": outputs["lse"] / LN2}
