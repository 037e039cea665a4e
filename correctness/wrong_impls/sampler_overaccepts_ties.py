"""A top-k/top-p sampler that over-accepts at the boundary: it keeps the first token the definition drops (the
most probable one outside the kept set, as a ``<=`` where ``<`` belongs would at a tie of the mass), then races;
its own randomness when ``noise`` is None."""
import torch

from kernels.torch_eager import kept_tokens


def top_k_top_p_sample(logits, *, temperature, top_k, top_p, noise=None):
    kept, probs, greedy, bad = kept_tokens(logits, temperature, top_k, top_p)
    ids = torch.arange(logits.shape[1], device=logits.device).expand_as(probs)
    outside = torch.where(~kept & (probs > 0), probs, -1.0)
    best = outside.max(1, keepdim=True).values
    first = torch.where(outside == best, ids, logits.shape[1]).min(1, keepdim=True).values
    kept = kept | ((ids == first) & (best > 0) & ~greedy[:, None])
    e = torch.empty_like(probs).exponential_() if noise is None else noise.float()
    race = torch.where(kept, torch.where(greedy[:, None], 1.0, probs / e), -1.0)
    return torch.where(bad, -1, torch.argmax(race, dim=1))
