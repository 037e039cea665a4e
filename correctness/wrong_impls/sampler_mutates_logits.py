"""A sampler that masks the dropped tokens' logits to -inf in place (as a sampler that edits the shared logits
or probs buffer does), then samples right: the caller's logits are changed."""
from kernels import triton as _T
from kernels.reference.sampling import kept_sets


def top_k_top_p_sample(logits, *, temperature, top_k, top_p, noise=None):
    out = _T.top_k_top_p_sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, noise=noise)
    _, maybe = kept_sets(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    import torch

    logits.masked_fill_(~torch.from_numpy(maybe).to(logits.device) & ~torch.isnan(logits), float("-inf"))
    return out
