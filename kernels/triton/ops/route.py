"""``route``: one Triton kernel for every router the contract defines (Mixtral's softmax top-k, DeepSeek-V3's
sigmoid with a selection bias, group-limited top-k and a scaling factor); see ``kernels/reference/routing.py``.

A program holds ``BLOCK_T`` tokens' whole rows of E logits (``BLOCK_E`` = E rounded up to a power of two, the
padding columns never eligible) and computes, in float32:

1. the scores ``s`` (softmax shifted by the row max, or a sigmoid from ``exp(-|x|)``, which cannot overflow);
2. the rank experts are chosen on: the logits themselves without a bias (softmax and sigmoid are monotone: the
   same order, independent of how ``s`` rounds), else ``s + bias``; a NaN ranks as -inf;
3. with groups, each group's score (the sum of the choice scores of its two best experts, a loop over the
   groups) and the ``TOPK_GROUPS`` best groups (ties to the lower group id), kept as a threshold: group g is kept
   iff its score beats the last kept group's, or equals it and g is not above its id;
4. ``TOP_K`` rounds of "the largest rank not yet taken, the lowest id among equals" over the kept experts: no
   sort of E, and any k (``BLOCK_K`` pads k to a power of two for the store, masked to k);
5. the weights: the chosen unbiased scores, over their sum (``renormalize``) or over the softmax denominator,
   times ``routed_scaling_factor``; NaN for a token whose logits hold NaN.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.routing import check_route
from kernels.triton.common import check_launch_device, next_pow2
from kernels.validate import require, torch_arguments

MAX_EXPERTS = 4096  # one program holds whole rows


@triton.jit
def _route_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, T, E, GROUP_SIZE, stride_lt, stride_le, stride_b,
                  scaling, TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, SIGMOID: tl.constexpr,
                  HAS_BIAS: tl.constexpr, NUM_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    kcols = tl.arange(0, BLOCK_K)
    rmask = rows < T
    cmask = cols < E
    rows64 = rows.to(tl.int64)
    logits = tl.load(logits_ptr + rows64[:, None] * stride_lt + cols[None, :] * stride_le,
                     mask=rmask[:, None] & cmask[None, :], other=float("-inf")).to(tl.float32)
    logits = tl.where(rmask[:, None], logits, 0.0)  # rows past T: any finite values, never stored
    is_nan = logits != logits
    row_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    # 1. scores: num / norm is s; the weights divide the chosen num by their sum or by norm
    if SIGMOID:
        z = tl.exp(-tl.abs(logits))
        num = tl.where(logits >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
        num = tl.where(cmask[None, :], num, 0.0)
        norm = tl.full((BLOCK_T,), 1.0, tl.float32)
    else:
        row_max = tl.max(logits, axis=1)
        num = tl.where(cmask[None, :], tl.exp(logits - row_max[:, None]), 0.0)
        norm = tl.sum(num, axis=1)
    # 2. the choice score (what groups are scored on) and the rank (what experts are chosen on)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_b, mask=cmask, other=0.0).to(tl.float32)
        choice = num / norm[:, None] + bias[None, :]
        rank = tl.where(choice != choice, float("-inf"), choice)
    else:
        choice = num / norm[:, None]
        rank = tl.where(is_nan, float("-inf"), logits)
    taken = (cols[None, :] >= E) | (rows[:, None] < 0)  # padding columns count as taken; [BLOCK_T, BLOCK_E]
    # 3. groups: score each, keep the TOPK_GROUPS best
    if NUM_GROUPS > 0:
        gid = cols // GROUP_SIZE
        clean = tl.where(choice != choice, float("-inf"), choice)
        gcols = tl.arange(0, BLOCK_G)
        gscores = tl.full((BLOCK_T, BLOCK_G), float("-inf"), tl.float32)
        score_of = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)  # each expert's group's score
        for g in range(NUM_GROUPS):
            in_g = ((gid == g) & cmask)[None, :] & (rows[:, None] >= 0)
            best1 = tl.max(tl.where(in_g, rank, float("-inf")), axis=1)
            i1 = tl.min(tl.where(in_g & (rank == best1[:, None]), cols[None, :], BLOCK_E), axis=1)
            first = cols[None, :] == i1[:, None]
            rest = in_g & ~first
            best2 = tl.max(tl.where(rest, rank, float("-inf")), axis=1)
            i2 = tl.min(tl.where(rest & (rank == best2[:, None]), cols[None, :], BLOCK_E), axis=1)
            two = first | (cols[None, :] == i2[:, None])
            score = tl.sum(tl.where(two, clean, 0.0), axis=1)
            score = tl.where(score != score, float("-inf"), score)  # -inf + inf: ranks lowest
            gscores = tl.where(gcols[None, :] == g, score[:, None], gscores)
            score_of = tl.where((gid == g)[None, :], score[:, None], score_of)
        gtaken = (gcols[None, :] >= NUM_GROUPS) | (rows[:, None] < 0)
        last_score = tl.zeros((BLOCK_T,), dtype=tl.float32)
        last_id = tl.zeros((BLOCK_T,), dtype=tl.int32)
        for j in range(TOPK_GROUPS):
            last_score = tl.max(tl.where(gtaken, float("-inf"), gscores), axis=1)
            last_id = tl.min(tl.where(~gtaken & (gscores == last_score[:, None]), gcols[None, :], BLOCK_G), axis=1)
            gtaken = gtaken | (gcols[None, :] == last_id[:, None])
        tied = score_of == last_score[:, None]
        kept = (score_of > last_score[:, None]) | (tied & (gid[None, :] <= last_id[:, None]))
        taken = taken | ~kept
    # 4. top-k over the experts not taken
    chosen_ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    chosen = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(tl.where(taken, float("-inf"), rank), axis=1)
        candidate = (rank == best[:, None]) & ~taken
        idx = tl.min(tl.where(candidate, cols[None, :], BLOCK_E), axis=1)
        hit = cols[None, :] == idx[:, None]
        taken = taken | hit
        chosen_ids = tl.where(kcols[None, :] == j, idx[:, None], chosen_ids)
        chosen = tl.where(kcols[None, :] == j, tl.sum(tl.where(hit, num, 0.0), axis=1)[:, None], chosen)
    # 5. weights
    if RENORMALIZE:
        w = chosen / tl.sum(chosen, axis=1)[:, None]
    else:
        w = chosen / norm[:, None]
    w = w * scaling
    w = tl.where(row_nan[:, None], float("nan"), w)  # a token whose logits hold NaN: NaN weights
    out_mask = rmask[:, None] & (kcols[None, :] < TOP_K)
    out_off = rows64[:, None] * TOP_K + kcols[None, :]
    tl.store(ids_ptr + out_off, chosen_ids, mask=out_mask)
    tl.store(weights_ptr + out_off, w, mask=out_mask)


@annotate("route")
@torch_arguments
def route(router_logits: torch.Tensor, top_k: int, *, renormalize: bool = True, scoring: str = "softmax",
          correction_bias: torch.Tensor | None = None, num_groups: int | None = None, topk_groups: int | None = None,
          routed_scaling_factor: float = 1.0, validate: bool = True):
    """``(topk_ids int32 [T, k], topk_weights float32 [T, k])``; see ``kernels.reference.route``.

    Its checks read only shapes and dtypes: ``validate`` changes nothing."""
    num_tokens, num_experts = check_route(router_logits, top_k, scoring=scoring, correction_bias=correction_bias,
                                          num_groups=num_groups, topk_groups=topk_groups,
                                          routed_scaling_factor=routed_scaling_factor)
    check_launch_device("router_logits", router_logits)
    require(num_experts <= MAX_EXPERTS, "router_logits",
            f"at most {MAX_EXPERTS} experts per kernel tile, got {num_experts}")
    dev = router_logits.device
    ids = torch.empty((num_tokens, top_k), dtype=torch.int32, device=dev)
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=dev)
    if num_tokens == 0:
        return ids, weights
    block_e = next_pow2(num_experts)
    bias = router_logits if correction_bias is None else correction_bias  # a placeholder the kernel never reads
    grid = lambda META: (triton.cdiv(num_tokens, META["BLOCK_T"]),)  # noqa: E731
    _route_kernel[grid](router_logits, bias, ids, weights, num_tokens, num_experts,
                        num_experts // (num_groups or 1), router_logits.stride(0), router_logits.stride(1),
                        bias.stride(0), float(routed_scaling_factor),
                        TOP_K=int(top_k), RENORMALIZE=bool(renormalize), SIGMOID=scoring == "sigmoid",
                        HAS_BIAS=correction_bias is not None, NUM_GROUPS=int(num_groups or 0),
                        TOPK_GROUPS=int(topk_groups or 0), BLOCK_T=max(1, min(16, 2048 // block_e)),
                        BLOCK_E=block_e, BLOCK_K=next_pow2(top_k), BLOCK_G=next_pow2(num_groups or 1))
    return ids, weights
