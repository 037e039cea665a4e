"""vLLM's ``merge_states``: its two-way ``merge_attn_states``.

- LSE: ours ``[num_tokens, num_heads]`` (natural log), vLLM's ``[num_heads, num_tokens]``; vLLM indexes it by
  strides, so a transposed view is enough (``lse_to_vllm``/``lse_from_vllm``).
- merge: vLLM merges exactly two partials (prefix, suffix); ``vllm_merge_states`` folds S partials pairwise,
  keeping the running result in float32 (so the fold adds no rounding of its own beyond the kernel's).
"""
from __future__ import annotations

import torch

from kernels.impls import Launch, peer_launch
from kernels.impls.vllm.env import load

def lse_to_vllm(lse: torch.Tensor) -> torch.Tensor:
    """Our ``[num_tokens, num_heads]`` LSE as vLLM's ``[num_heads, num_tokens]`` (a view; same log base)."""
    return lse.transpose(0, 1)


def lse_from_vllm(lse: torch.Tensor) -> torch.Tensor:
    return lse.transpose(0, 1)


def vllm_merge_states(outs: torch.Tensor, lses: torch.Tensor):
    """Our ``merge_states(outs [S, T, H, D], lses [S, T, H])`` through vLLM's two-way ``merge_attn_states``,
    folded left to right. Returns ``(out [T, H, D] in outs.dtype, lse [T, H] float32)``."""
    vl = load()
    num = outs.shape[0]
    if num == 1:
        return outs[0].clone(), lses[0].float().clone()
    acc_out, acc_lse = outs[0], lses[0].float()
    for s in range(1, num):
        last = s == num - 1
        out = torch.empty(outs.shape[1:], dtype=outs.dtype if last else torch.float32, device=outs.device)
        out_lse = torch.empty(lses.shape[2], lses.shape[1], dtype=torch.float32, device=outs.device)
        # vLLM reads both partials with the prefix's head stride: give it two same-layout contiguous tensors
        prefix = acc_out.to(torch.float32).contiguous() if s > 1 else acc_out.contiguous()
        suffix = outs[s].to(prefix.dtype).contiguous()
        vl.merge_attn_states(out, prefix, lse_to_vllm(acc_lse), suffix, lse_to_vllm(lses[s].float()), out_lse)
        acc_out, acc_lse = out, lse_from_vllm(out_lse)
    return acc_out, acc_lse.contiguous()


def setup(outs, lses, **ignored) -> Launch:
    """The timed call: one two-way ``merge_attn_states`` launch per extra partial (S = 2 is one launch)."""
    return peer_launch(lambda state: vllm_merge_states(state["outs"], state["lses"]), {"outs": outs, "lses": lses})


def merge_states(outs, lses, **kwargs):
    return vllm_merge_states(outs, lses)
