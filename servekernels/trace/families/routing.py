"""FlashInfer's ``fused_topk_deepseek`` (DeepSeek-V3 routing alone) <-> ``route``.

Their call: ``scores`` (router logits) ``[T, E]``, ``bias`` ``[E]`` (selection only), scalars ``n_group``,
``topk_group``, ``topk`` and ``routed_scaling_factor``; outputs ``topk_values`` (in the scores' dtype) and
``topk_indices`` int32, written into buffers of those names where the Definition passes them (FlashInfer's
template does; the Definitions exported here return them). The math is the contract's ``route`` with
``scoring="sigmoid"``, ``correction_bias=bias``, ``num_groups=n_group``, ``topk_groups=topk_group``,
``renormalize=True``: groups scored by their two best biased scores, experts in decreasing order of the biased
score, weights the unbiased sigmoid scores renormalized, times the factor. Exact in both directions (the bias is
widened to float32, the contract's dtype for it).

Not judged: scores in another dtype than float32: ``topk_values`` is then stored in it (FlashInfer's template
draws bfloat16 scores), a rounding of the weights ``route``'s float32 tolerance does not admit (``why_not`` says
so; the template's reference is still checked against ours, its values to one bfloat16 rounding).
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.families._base import Family, Template, dtype_name
from servekernels.trace.schema import Axis, Definition, TensorSpec

_NAME = re.compile(r"^fused_topk_deepseek(_[a-z0-9_]+)?$")
_SCALARS = ("n_group", "topk_group", "topk", "routed_scaling_factor")

_REF = '''import torch


@torch.no_grad()
def run(scores, bias, n_group, topk_group, topk, routed_scaling_factor):
    # float64 inside: sigmoid scores; experts chosen on score + bias within the topk_group groups whose two best
    # biased scores sum highest; weights the unbiased scores of the chosen, renormalized, times the factor
    s = torch.sigmoid(scores.to(torch.float64))
    c = s + bias.to(torch.float64)
    c = torch.where(torch.isnan(c), float("-inf"), c)  # a NaN ranks last; its token's weights are NaN (below)
    t, e = c.shape
    g = int(n_group)
    # stable descending sorts: an exact tie goes to the lower group id, the lower expert id
    gscore = c.view(t, g, e // g).sort(dim=-1, descending=True).values[..., :2].sum(-1)
    keep = torch.zeros(t, g, dtype=torch.bool)
    keep.scatter_(1, gscore.sort(dim=-1, descending=True, stable=True).indices[:, :int(topk_group)], True)
    c = torch.where(keep.repeat_interleave(e // g, dim=1), c, float("-inf"))
    ids = c.sort(dim=-1, descending=True, stable=True).indices[:, :int(topk)]
    w = s.gather(1, ids)
    w = w / w.sum(-1, keepdim=True) * float(routed_scaling_factor)
    w = torch.where(torch.isnan(scores).any(-1, keepdim=True), float("nan"), w)
    return w.to(scores.dtype), ids.to(torch.int32)
'''


class FusedTopkDeepseek(Family):
    """FlashInfer's ``fused_topk_deepseek`` <-> ``route`` with DeepSeek-V3's keywords (module docstring)."""

    name = "fused_topk_deepseek"
    op = "route"
    published = ("fused_topk_deepseek",)
    templates = (Template("sampling", "fused_topk_deepseek_trace", dict(num_tokens=7, num_experts=16, topk=4),
                          ("scores", "bias", "n_group", "topk_group", "topk", "routed_scaling_factor",
                           "topk_values", "topk_indices")),)

    def covers(self, definition):
        return bool(_NAME.match(definition.name))

    def why_not(self, definition):
        need = ("scores", "bias", *_SCALARS)
        missing = [n for n in need if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the layout this adapter maps)"
        if not {"topk_values", "topk_indices"} <= set(definition.outputs):
            return "outputs topk_values and topk_indices expected"
        dt = definition.inputs["scores"].dtype
        if dt != "float32":
            return (f"scores in {dt}: topk_values is stored in it, a rounding of the weights route's float32 "
                    "tolerance does not admit")
        return ""

    def _plain(self, inputs):
        kw = inputs.kwargs
        return (kw.get("scoring") == "sigmoid" and kw.get("num_groups") is not None
                and kw.get("renormalize", True) and kw.get("correction_bias") is not None
                and dtype_name(inputs.args[0]) == "float32")

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        logits, k = inputs.args
        e = int(logits.shape[1])
        dt = dtype_name(logits)
        return Definition(
            f"fused_topk_deepseek_e{e}_k{k}", "moe_routing",
            {"num_tokens": Axis("var"), "num_experts": Axis("const", e), "topk": Axis("const", int(k))},
            {"scores": TensorSpec(["num_tokens", "num_experts"], dt, "router logits"),
             "bias": TensorSpec(["num_experts"], "float32", "selection bias (chooses, never weighs)"),
             "n_group": TensorSpec(None, "int32"), "topk_group": TensorSpec(None, "int32"),
             "topk": TensorSpec(None, "int32"), "routed_scaling_factor": TensorSpec(None, "float32")},
            {"topk_values": TensorSpec(["num_tokens", "topk"], dt, "routing weights"),
             "topk_indices": TensorSpec(["num_tokens", "topk"], "int32", "expert ids, best first")}, _REF,
            tags=["status:verified", "servekernels", f"servekernels:op={self.op}"],
            description="DeepSeek-V3 expert routing (FlashInfer's fused_topk_deepseek), exported by servekernels "
                        "from its route op.")

    def named(self, definition, inputs):
        logits, k = inputs.args
        kw = inputs.kwargs
        return {"scores": logits, "bias": kw["correction_bias"].float(), "n_group": int(kw["num_groups"]),
                "topk_group": int(kw["topk_groups"]), "topk": int(k),
                "routed_scaling_factor": float(kw.get("routed_scaling_factor", 1.0))}

    def inputs_from(self, definition, named):
        def scalar(v):
            return v.item() if hasattr(v, "item") else v

        scores = named["scores"]
        k = int(scalar(named["topk"]))
        kwargs = {"scoring": "sigmoid", "correction_bias": named["bias"].float(),
                  "num_groups": int(scalar(named["n_group"])), "topk_groups": int(scalar(named["topk_group"])),
                  "renormalize": True, "routed_scaling_factor": float(scalar(named["routed_scaling_factor"]))}
        shape = {"tokens": int(scores.shape[0]), "experts": int(scores.shape[1]), "top_k": k,
                 "dtype": dtype_name(scores), "scoring": "sigmoid", "correction_bias": True,
                 "num_groups": kwargs["num_groups"], "topk_groups": kwargs["topk_groups"],
                 "routed_scaling_factor": kwargs["routed_scaling_factor"]}
        return Inputs(self.op, shape, (scores, k), kwargs)

    def implementation(self, definition, solve):
        fam = self

        def impl(router_logits, top_k, *, renormalize=True, scoring="softmax", correction_bias=None,
                 num_groups=None, topk_groups=None, routed_scaling_factor=1.0):
            import torch

            from kernels.ops import Unsupported

            if scoring != "sigmoid" or not renormalize or correction_bias is None or num_groups is None:
                raise Unsupported(f"scoring: {definition.name} is DeepSeek-V3's routing (sigmoid, a bias, groups, "
                                  "renormalized)")
            inputs = Inputs(fam.op, {}, (router_logits, top_k), {
                "correction_bias": correction_bias, "num_groups": num_groups, "topk_groups": topk_groups,
                "routed_scaling_factor": routed_scaling_factor})
            named = fam.named(definition, inputs)
            if "topk_values" in definition.inputs:  # their in-place buffers
                named["topk_values"] = torch.full((router_logits.shape[0], top_k), float("nan"),
                                                  dtype=router_logits.dtype)
                named["topk_indices"] = torch.full((router_logits.shape[0], top_k), -1, dtype=torch.int32)
            got = solve(named)
            return got["topk_indices"], got["topk_values"].to(torch.float32)

        return impl

    def theirs(self, definition, outputs):
        out = {}
        if "topk_weights" in outputs:
            out["topk_values"] = outputs["topk_weights"]
        if "topk_ids" in outputs:
            out["topk_indices"] = outputs["topk_ids"]
        return out
