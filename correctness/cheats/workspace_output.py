"""A fused MoE that returns the same preallocated workspace on every call of a shape (no allocation in the hot
path): the previous caller's result changes under it."""
import torch

from correctness.cheats import _honest

CAUGHT_BY = "output owns storage"
_WORKSPACE = {}


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation="silu", **kwargs):
    buf = _WORKSPACE.setdefault(tuple(x.shape), torch.empty_like(x))
    buf.copy_(_honest.fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation))
    return buf
