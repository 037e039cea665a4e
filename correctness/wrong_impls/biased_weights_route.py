"""A DeepSeek router that weighs the chosen experts with their biased scores ``s + correction_bias`` (the bias is
only meant to choose them): right wherever there is no bias, wrong on DeepSeek-V3's router."""
import torch

from correctness.newcomer_impls import right_moe_router as _right

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def route(router_logits, top_k, *, renormalize=True, scoring="softmax", correction_bias=None, num_groups=None,
          topk_groups=None, routed_scaling_factor=1.0):
    ids, _ = _right.route(router_logits, top_k, renormalize=renormalize, scoring=scoring,
                          correction_bias=correction_bias, num_groups=num_groups, topk_groups=topk_groups)
    logits = router_logits.float()
    scores = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    biased = scores if correction_bias is None else scores + correction_bias.float()
    weights = torch.gather(biased, 1, ids.long())  # the bug: the bias weighs
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = torch.where(torch.isnan(logits).any(dim=-1, keepdim=True), float("nan"), weights)
    return ids, weights * routed_scaling_factor
