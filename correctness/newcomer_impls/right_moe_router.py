"""A right float32 MoE and router, written as a newcomer would: dequantize each routed expert's weights to
float32 (int4 nibbles, fp8 with its scales), run the two GEMMs in float32 (fp8 experts quantize the activation
entering each GEMM per token-group of 128 first, as the contract says), one cast of the result. ``route`` is
a float32 softmax or sigmoid, DeepSeek's biased group-limited choice as vLLM's grouped_topk writes it, and a
stable top-k; ``moe_permute`` a stable sort."""
import torch

SERVEKERNELS_TRITON = False  # eager torch: nothing to count under the Triton interpreter
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it

FP8_MAX = 448.0


def dequant_int4(weight, e):
    """Expert ``e`` of an int4 stack as float32 ``[N, K]``: nibble k of a row in byte k // 2 (even k low)."""
    packed = weight.qweight[e]
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).float()  # [N, K]
    g = weight.group_size
    zero = weight.zeros[e].float() if weight.zeros is not None else torch.full_like(weight.scales[e].float(), 8.0)
    scale = weight.scales[e].float()
    return (nibbles - zero.repeat_interleave(g, dim=-1)) * scale.repeat_interleave(g, dim=-1)


def dequant_fp8(weight, e):
    """Expert ``e`` of an fp8 stack as float32 ``[N, K]``, its tensor, channel or block scales applied."""
    data = weight.data[e].float()
    n, k = data.shape
    s = weight.scales[e].float()
    if weight.granularity == "tensor":
        return data * s
    if weight.granularity == "channel":
        return data * s[:, None]
    bn, bk = weight.block_size
    return data * s.repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]


def dequant(weight, e):
    if hasattr(weight, "qweight"):
        return dequant_int4(weight, e)
    if hasattr(weight, "granularity"):
        return dequant_fp8(weight, e)
    return weight[e].float()


def fp8_act(a, group=128):
    """``a [M, K]`` float32 through float8 e4m3 per token-group of ``group`` (scale = amax / 448), back to
    float32."""
    m, k = a.shape
    pad = (-k) % group
    padded = torch.nn.functional.pad(a, (0, pad)).view(m, -1, group)
    scale = (padded.abs().amax(dim=-1, keepdim=True).clamp(min=2.0 ** -32) / FP8_MAX).float()
    q = (padded / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    return (q * scale).view(m, -1)[:, :k]


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", batch_invariant=False):
    if activation != "silu":
        raise ValueError(f"activation: only 'silu' is defined, got {activation!r}")
    fp8 = hasattr(w13, "granularity")
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    ids = topk_ids.long()
    for e in torch.unique(ids).tolist():  # only routed experts: an unrouted one's weights are never read
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        a = x[tok].float()
        gu = (fp8_act(a) if fp8 else a) @ dequant(w13, e).T
        inter = gu.shape[1] // 2
        h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
        y = (fp8_act(h) if fp8 else h) @ dequant(w2, e).T
        out.index_add_(0, tok, topk_weights[tok, slot].float()[:, None] * y)
    return out.to(x.dtype)


def route(router_logits, top_k, *, renormalize=True, scoring="softmax", correction_bias=None, num_groups=None,
          topk_groups=None, routed_scaling_factor=1.0):
    logits = router_logits.float()
    scores = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    biased = scores if correction_bias is None else scores + correction_bias.float()  # chosen on, never weighs
    biased = torch.nan_to_num(biased, nan=float("-inf"))  # a NaN is never chosen before a number
    if num_groups is not None:  # keep the topk_groups groups whose two best biased scores sum highest
        tokens, experts = biased.shape
        per_group = biased.view(tokens, num_groups, experts // num_groups)
        group_score = per_group.topk(2, dim=-1).values.sum(dim=-1)
        best_groups = torch.sort(group_score, dim=-1, descending=True, stable=True).indices[:, :topk_groups]
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, best_groups, True)
        biased = per_group.masked_fill(~keep[..., None], float("-inf")).view(tokens, experts)
    ids = torch.sort(biased, dim=-1, descending=True, stable=True).indices[:, :top_k]  # ties to the lower id
    weights = torch.gather(scores, 1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    weights = torch.where(torch.isnan(logits).any(dim=-1, keepdim=True), float("nan"), weights)
    return ids.to(torch.int32), weights * routed_scaling_factor


def moe_permute(topk_ids, num_experts):
    flat = topk_ids.flatten().long()
    sorted_index = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = torch.zeros(num_experts + 1, dtype=torch.int64, device=topk_ids.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return sorted_index, offsets


# gpt-oss's MXFP4 experts (their biases, swiglu_oai) are not written here: declined, so check reports those cases
# as not supported instead of judging SiLU-and-mul on them
SERVEKERNELS_UNSUPPORTED = {fused_moe.__name__: {"weights=mxfp4": "MXFP4 experts not written in this module",
                                                 "w13_bias": "expert biases not written in this module",
                                                 "w2_bias": "expert biases not written in this module",
                                                 "activation=swiglu_oai": "only SiLU-and-mul is written here"}}
