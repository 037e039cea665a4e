"""A top-k/top-p sampler that loses the least probable kept token (an off-by-one at the boundary: the prefix
stops one token early), then races the rest; its own randomness when ``noise`` is None."""
import torch

from kernels.torch_eager import kept_tokens


def top_k_top_p_sample(logits, *, temperature, top_k, top_p, noise=None):
    kept, probs, greedy, bad = kept_tokens(logits, temperature, top_k, top_p)
    ids = torch.arange(logits.shape[1], device=logits.device).expand_as(probs)
    least = torch.where(kept, probs, float("inf")).min(1, keepdim=True).values
    last = torch.where(kept & (probs == least), ids, -1).max(1, keepdim=True).values  # its highest id
    kept = kept & ~((ids == last) & (kept.sum(1, keepdim=True) > 1))
    e = torch.empty_like(probs).exponential_() if noise is None else noise.float()
    return torch.where(bad, -1, torch.argmax(torch.where(kept, probs / e, -1.0), dim=1))
