"""A fused MoE that memoises its output by the inputs' shapes (a serving loop calls it with the same batch
shape again and again)."""
from correctness.cheats import _honest

CAUGHT_BY = "fresh values"
_CACHE = {}


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", **kwargs):
    key = (tuple(x.shape), tuple(topk_ids.shape), x.dtype)
    if key not in _CACHE:
        _CACHE[key] = _honest.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation)
    return _CACHE[key].clone()
