"""A fused_moe that renormalises the router's weights itself (right only for Mixtral-style routers: DeepSeek-V2
and Qwen2-MoE keep the softmax weights of the top k, which sum to less than 1)."""
from correctness.ideal_impls import float32 as _F

SERVEKERNELS_TRITON = False


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", batch_invariant=False):
    weights = topk_weights / topk_weights.sum(dim=1, keepdim=True)
    return _F.fused_moe(x, w13, w2, topk_ids, weights, activation=activation)
