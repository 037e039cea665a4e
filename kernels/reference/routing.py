"""MoE routing (``route``), defined in float64 numpy: Mixtral's softmax top-k and DeepSeek-V3's biased, group-limited
sigmoid top-k are the same function with different keywords.

Per token (a row of ``router_logits [T, E]``):

1. scores ``s``: ``softmax(logits)`` over the E experts, or ``sigmoid(logits)``;
2. the choice score ``c = s + correction_bias`` (``s`` without a bias): experts are chosen on ``c``, weighted by ``s``
   (the bias selects, it never weighs);
3. with ``num_groups``: the E experts split into ``num_groups`` equal, consecutive groups; a group's score is the
   sum of its two largest ``c``; the ``topk_groups`` best groups are kept (ties to the lower group id);
4. the ``top_k`` largest ``c`` among the kept experts (ties to the lower expert id), in decreasing order;
5. weights: the chosen experts' ``s``, divided by their sum when ``renormalize``, times ``routed_scaling_factor``.

Experts are ranked on the logits themselves when there is no bias: softmax and sigmoid are monotone, so that is
the same order, and it cannot depend on how ``s`` is rounded (two logits whose ``s`` round to one value stay
apart). A NaN ranks as -inf (the lowest value; equal ranks go to the lower id), so ids stay in ``[0, E)`` and
distinct whatever the logits hold; a token whose logits hold NaN gets NaN weights.

``check_route`` is the one validation the reference, the Triton launcher and the eager baseline run.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.reference._arrays import f64
from kernels.validate import check_ndim, check_same_device, dtype_name, is_torch, require

ROUTER_DTYPES = ("float16", "bfloat16", "float32")
SCORINGS = ("softmax", "sigmoid")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_route(router_logits, top_k, *, scoring="softmax", correction_bias=None, num_groups=None,
                topk_groups=None, routed_scaling_factor=1.0) -> tuple[int, int]:
    """``(T, E)``; a ``ValueError`` naming the argument for anything the contract does not define. Reads shapes,
    dtypes and devices only (no tensor value)."""
    check_ndim(router_logits, 2, "router_logits", "[num_tokens, num_experts]")
    num_tokens, num_experts = (int(s) for s in router_logits.shape)
    require(num_experts >= 1, "router_logits", "needs at least one expert column")
    require(_is_int(top_k) and 1 <= top_k <= num_experts, "top_k",
            f"must be an int in 1..num_experts={num_experts}, got {top_k!r}")
    require(scoring in SCORINGS, "scoring", f"must be one of {SCORINGS}, got {scoring!r}")
    require(isinstance(routed_scaling_factor, (int, float, np.floating, np.integer))
            and not isinstance(routed_scaling_factor, bool) and math.isfinite(routed_scaling_factor),
            "routed_scaling_factor", f"must be a finite number, got {routed_scaling_factor!r}")
    if correction_bias is not None:
        require(hasattr(correction_bias, "shape") and tuple(correction_bias.shape) == (num_experts,),
                "correction_bias", f"must have shape [num_experts] = ({num_experts},), got "
                                   f"{tuple(getattr(correction_bias, 'shape', ()))}")
        if is_torch(correction_bias):
            require(dtype_name(correction_bias) in ROUTER_DTYPES, "correction_bias",
                    f"dtype must be one of {ROUTER_DTYPES}, got {dtype_name(correction_bias)}")
        check_same_device(router_logits=router_logits, correction_bias=correction_bias)
    require(num_groups is None or topk_groups is not None, "topk_groups", "must be given with num_groups")
    require(topk_groups is None or num_groups is not None, "num_groups", "must be given with topk_groups")
    if num_groups is not None:
        require(_is_int(num_groups) and num_groups >= 1, "num_groups", f"must be an int >= 1, got {num_groups!r}")
        require(num_experts % num_groups == 0, "num_groups",
                f"must divide num_experts={num_experts} into equal groups, got {num_groups}")
        require(num_experts // num_groups >= 2, "num_groups",
                f"each group needs at least 2 experts (its score is its two best), got {num_experts} experts in "
                f"{num_groups} groups")
        require(_is_int(topk_groups) and 1 <= topk_groups <= num_groups, "topk_groups",
                f"must be an int in 1..num_groups={num_groups}, got {topk_groups!r}")
        require(top_k <= topk_groups * (num_experts // num_groups), "top_k",
                f"must be at most topk_groups * experts per group = {topk_groups * (num_experts // num_groups)}, "
                f"got {top_k}")
    if is_torch(router_logits):
        require(dtype_name(router_logits) in ROUTER_DTYPES, "router_logits",
                f"dtype must be one of {ROUTER_DTYPES}, got {dtype_name(router_logits)}")
    return num_tokens, num_experts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, shifted by the row's max (a row of NaN stays NaN)."""
    if not logits.size:
        return logits.copy()
    with np.errstate(invalid="ignore"):
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return p / p.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, written so neither branch overflows."""
    z = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def top_columns(rank: np.ndarray, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Per row, the ``k`` eligible columns of largest ``rank``, in decreasing order, equal ranks by the lower
    column; a NaN ranks as -inf. ``int64 [rows, k]``."""
    key = np.where(np.isnan(rank), -np.inf, rank)
    ineligible = np.zeros(key.shape, dtype=bool) if eligible is None else ~eligible
    return np.lexsort((-key, ineligible), axis=-1)[..., :k]  # eligible first, then by rank; stable: lower column


def group_scores(choice: np.ndarray, num_groups: int) -> np.ndarray:
    """``[T, num_groups]``: the sum of each group's two largest choice scores (a NaN counts as -inf)."""
    t, e = choice.shape
    c = np.where(np.isnan(choice), -np.inf, choice).reshape(t, num_groups, e // num_groups)
    return np.sort(c, axis=-1)[..., -2:].sum(axis=-1)


def route(router_logits, top_k: int, *, renormalize: bool = True, scoring: str = "softmax", correction_bias=None,
          num_groups: int | None = None, topk_groups: int | None = None, routed_scaling_factor: float = 1.0):
    """``(topk_ids int32 [T, k], topk_weights float64 [T, k])``: the module docstring's five steps."""
    check_route(router_logits, top_k, scoring=scoring, correction_bias=correction_bias, num_groups=num_groups,
                topk_groups=topk_groups, routed_scaling_factor=routed_scaling_factor)
    logits = f64(router_logits)
    num_tokens, num_experts = logits.shape
    s = softmax(logits) if scoring == "softmax" else sigmoid(logits)  # 1. scores
    choice = s if correction_bias is None else s + f64(correction_bias)[None, :]  # 2. what experts are chosen on
    rank = logits if correction_bias is None else choice  # the same order as choice (s is monotone in the logit)
    eligible = None
    if num_groups is not None:  # 3. the topk_groups best groups (ties to the lower group id)
        kept = top_columns(group_scores(choice, num_groups), topk_groups)
        group_of = np.arange(num_experts) // (num_experts // num_groups)
        eligible = (group_of[None, :, None] == kept[:, None, :]).any(axis=-1)
    ids = top_columns(rank, top_k, eligible)  # 4. top-k among the kept experts
    weights = np.take_along_axis(s, ids, axis=1)  # 5. the unbiased scores weigh
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    weights = weights * float(routed_scaling_factor)
    row_nan = np.isnan(logits).any(axis=1, keepdims=True)
    return ids.astype(np.int32), np.where(row_nan, np.nan, weights)
