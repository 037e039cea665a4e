"""A fused MoE with an output cache keyed on a cheap fingerprint of the inputs: their shapes and the first and
last 16 bytes of each (the cache that inflated MoE speedups in a public kernel contest)."""
import torch

from correctness.cheats import _honest

CAUGHT_BY = "fresh values"
_CACHE = {}


def _print(t: torch.Tensor) -> tuple:
    raw = t.detach().contiguous().view(-1).view(torch.uint8)
    return tuple(t.shape), bytes(raw[:16].tolist()), bytes(raw[-16:].tolist())


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", **kwargs):
    key = tuple(_print(t) for t in (x, topk_ids, topk_weights))
    if key not in _CACHE:
        _CACHE[key] = _honest.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation)
    return _CACHE[key].clone()
