"""A router that takes ``renormalize`` and ignores it: its top-k weights always sum to 1 (Mixtral style), where
``renormalize=False`` (DeepSeek-V2, Qwen2-MoE) keeps the softmax weights of the k chosen."""
import torch

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def route(router_logits, top_k, *, renormalize=True):
    logits = router_logits.float()
    probs = torch.softmax(logits, dim=-1)
    ids = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :top_k]
    weights = torch.gather(probs, 1, ids)
    weights = weights / weights.sum(dim=-1, keepdim=True)  # the bug: renormalised whatever renormalize says
    return ids.to(torch.int32), weights


# a Mixtral-style router only: DeepSeek's keywords are declined (and left out of its signature)
SERVEKERNELS_UNSUPPORTED = {route.__name__: {key: "a softmax top-k router only" for key in (
    "scoring", "correction_bias", "num_groups", "topk_groups", "routed_scaling_factor")}}
