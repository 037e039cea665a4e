"""A fused_moe that renormalises the router's weights itself (right only for Mixtral-style routers: DeepSeek-V2
and Qwen2-MoE keep the softmax weights of the top k, which sum to less than 1). The rest is
``right_moe_router``'s."""
from correctness.newcomer_impls import right_moe_router as _right

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", batch_invariant=False):
    weights = topk_weights / topk_weights.sum(dim=1, keepdim=True)  # the bug: the router decides this, not us
    return _right.fused_moe(x, w13, w2, topk_ids, weights, activation=activation)


# gpt-oss's MXFP4 experts (their biases, swiglu_oai) are not written here: declined, so check reports those cases
# as not supported instead of judging SiLU-and-mul on them
SERVEKERNELS_UNSUPPORTED = {fused_moe.__name__: {"weights=mxfp4": "MXFP4 experts not written in this module",
                                                 "w13_bias": "expert biases not written in this module",
                                                 "w2_bias": "expert biases not written in this module",
                                                 "activation=swiglu_oai": "only SiLU-and-mul is written here"}}
