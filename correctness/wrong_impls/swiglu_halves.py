"""gpt-oss's ``swiglu_oai`` with gate and up de-interleaved the wrong way: gate = the first half of w13's rows, up =
the second (the SiLU layout), instead of the even and odd rows. Clamps, alpha and the biases as the contract says;
everything else the float32 eager baseline's. Must fail ``check`` on the gpt-oss MoE cases."""
import torch

from kernels import torch_eager as _E
from kernels.reference.moe import SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT

SERVEKERNELS_TRITON = False


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", w13_bias=None, w2_bias=None,
              batch_invariant=False):
    if activation != "swiglu_oai":
        return _E.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation, w13_bias=w13_bias,
                            w2_bias=w2_bias)
    w13d, w2d = _E._dense_stack(w13), _E._dense_stack(w2)
    inter = w13d.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float32)
    ids = topk_ids.long()
    for e in range(w13d.shape[0]):
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        gu = x[tok].float() @ w13d[e].T + (0 if w13_bias is None else w13_bias[e])
        gate = gu[:, :inter].clamp(max=SWIGLU_OAI_LIMIT)  # the bug: gate and up are interleaved (0::2, 1::2)
        up = gu[:, inter:].clamp(-SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT)
        h = gate * torch.sigmoid(SWIGLU_OAI_ALPHA * gate) * (up + 1)
        y = h @ w2d[e].T + (0 if w2_bias is None else w2_bias[e])
        out.index_add_(0, tok, y * topk_weights[tok, slot].float()[:, None])
    return out.to(x.dtype)
