"""A tiny Llama-style MoE decoder with random weights drawn from a seed.

Per layer: ``x += o_proj(attention(rope(q), rope(k), v))`` over the paged KV cache, then
``x += fused_moe(rmsnorm(x))`` with a softmax top-k router (Mixtral style). Attention, KV writes, routing and
the expert MLP, RMSNorm (the residual add fused into it) and NeoX RoPE go through the backend (the kernels under
test); the dense projections go through ``Backend.linear`` (torch's matmul, or a fixed-tile kernel in
batch-invariant mode). The weight scales are chosen so attention matters: two prompts that end in the same
token continue differently.
"""
from __future__ import annotations

import torch

from engine.backend import Backend
from engine.config import ModelConfig
from engine.context import StepContext
from kernels.reference.norms import rope_cos_sin_cache
from kernels.nvtx import nvtx_range

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def rope_cache(cfg: ModelConfig, device) -> torch.Tensor:
    """The float32 ``[max_model_len, head_dim]`` cos/sin cache of NeoX RoPE (``kernels.reference.norms``)."""
    return torch.from_numpy(rope_cos_sin_cache(cfg.max_model_len, cfg.head_dim, cfg.rope_theta)).to(
        device, torch.float32)


class Layer:
    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "router", "w13", "w2")


class Model:
    def __init__(self, cfg: ModelConfig, backend: Backend, device="cpu") -> None:
        self.cfg, self.backend = cfg, backend
        dtype = TORCH_DTYPES[cfg.dtype]
        gen = torch.Generator().manual_seed(cfg.seed)
        h, d, hq, hkv = cfg.hidden_size, cfg.head_dim, cfg.num_q_heads, cfg.num_kv_heads
        inter, e = cfg.intermediate_size, cfg.num_experts

        def rand(*shape, std: float, mean: float = 0.0) -> torch.Tensor:
            w = torch.randn(*shape, generator=gen, dtype=torch.float32) * std + mean
            return w.to(device=device, dtype=dtype)

        self.embed = rand(cfg.vocab_size, h, std=1.0)
        self.layers = []
        for _ in range(cfg.num_layers):
            layer = Layer()
            layer.attn_norm = rand(h, std=0.1, mean=1.0)
            layer.wq = rand(hq * d, h, std=2.0 * h ** -0.5)  # sharper attention than a 1/sqrt(h) init
            layer.wk = rand(hkv * d, h, std=2.0 * h ** -0.5)
            layer.wv = rand(hkv * d, h, std=h ** -0.5)
            layer.wo = rand(h, hq * d, std=2.0 * (hq * d) ** -0.5)
            layer.mlp_norm = rand(h, std=0.1, mean=1.0)
            layer.router = rand(e, h, std=h ** -0.5)
            layer.w13 = backend.quantize(rand(e, 2 * inter, h, std=h ** -0.5), cfg.weight_quant)
            layer.w2 = backend.quantize(rand(e, h, inter, std=inter ** -0.5), cfg.weight_quant)
            self.layers.append(layer)
        self.final_norm = rand(h, std=0.1, mean=1.0)
        self.lm_head = rand(cfg.vocab_size, h, std=3.0 * h ** -0.5)  # logits of a few units: no near-ties
        self.rope_cache = rope_cache(cfg, device)

    def forward(self, ctx: StepContext, kv_caches: list[torch.Tensor], check_finite: bool = False) -> torch.Tensor:
        """Logits (float32 ``[S, vocab]``) of the tokens at ``ctx.logits_indices``; writes this step's K/V.

        ``check_finite``: raise FloatingPointError at the first layer whose attention output is not finite.
        """
        cfg, be = self.cfg, self.backend
        t, d = ctx.num_tokens, cfg.head_dim
        x = self.embed[ctx.input_ids]  # the residual stream (a copy: the fused adds update it in place)
        branch = None  # the last block's output, not yet added to x (added inside the next norm)
        for i, (layer, kv) in enumerate(zip(self.layers, kv_caches)):
            with nvtx_range("attention", "engine"):
                hs = (be.rms_norm(x, layer.attn_norm, cfg.rms_eps) if branch is None else
                      be.fused_add_rms_norm(branch, x, layer.attn_norm, cfg.rms_eps))
                q = be.linear(hs, layer.wq).view(t, cfg.num_q_heads, d)
                k = be.linear(hs, layer.wk).view(t, cfg.num_kv_heads, d)
                be.rotary_embedding(ctx.positions, q, k, self.rope_cache)
                v = be.linear(hs, layer.wv).view(t, cfg.num_kv_heads, d)
                be.write_kv(k, v, kv[0], kv[1], ctx.slot_mapping)
                attn = be.attention(q.contiguous(), kv[0], kv[1], ctx)
                if check_finite and not bool(torch.isfinite(attn).all()):
                    raise FloatingPointError(f"layer {i}: attention output is not finite: a kernel read KV memory no "
                                             "request owns (poisoned with NaN), or the cache was corrupted")
                branch = be.linear(attn.reshape(t, -1), layer.wo)
            with nvtx_range("moe", "engine"):
                hs = be.fused_add_rms_norm(branch, x, layer.mlp_norm, cfg.rms_eps)
                ids, weights = be.route(be.linear(hs, layer.router).float(), cfg.top_k)
                branch = be.fused_moe(hs, layer.w13, layer.w2, ids, weights)
        rows = ctx.logits_indices
        last = (be.rms_norm(x[rows], self.final_norm, cfg.rms_eps) if branch is None else
                be.fused_add_rms_norm(branch[rows], x[rows], self.final_norm, cfg.rms_eps))
        return be.linear(last, self.lm_head).float()
