"""Speculative decoding's verification: accept draft tokens while ``u * p_draft <= p_target`` (and
``p_target > 0``), emit the recovered token at the first rejection, the bonus token when all were accepted (see
docs/contract.md).

One program per request walks its draft positions in order. An accepted position reads 4 numbers (its id, its
uniform and the two probabilities of its token); only the first rejected position reads its target and draft
rows and its noise, in one pass that finds both ``argmax(max(0, target - draft) / noise)`` and the target's
choice ``argmax(target / noise)`` (per lane, reduced once; ties to the lower id). With ``draft_probs=None`` every
position needs the target's choice (one pass each). Positions after the end of a request's row keep the -1 the
launcher fills in.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.sampling import check_rejection
from kernels.triton.common import check_launch_device
from kernels.validate import torch_arguments

BLOCK = 1024  # vocabulary columns per step of a recovery pass


@triton.jit
def _choices(target_ptr, draft_ptr, noise_ptr, t, vocab, s_tt, s_tv, s_dt, s_dv, s_nt, s_nv,
             HAS_DRAFT: tl.constexpr, BLOCK: tl.constexpr):
    """One pass over position t's rows: (recovered id, target's choice), each an argmax with ties to the lower
    id; the recovered id is the choice when the residual is all zero (or there is no draft)."""
    lanes = tl.arange(0, BLOCK)
    best_c = tl.full((BLOCK,), -1.0, tl.float32)
    id_c = tl.zeros((BLOCK,), tl.int32)
    best_r = tl.full((BLOCK,), 0.0, tl.float32)
    id_r = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, vocab, BLOCK):
        offs = start + lanes
        valid = offs < vocab
        p = tl.load(target_ptr + t * s_tt + offs * s_tv, mask=valid, other=0.0).to(tl.float32)
        n = tl.load(noise_ptr + t * s_nt + offs * s_nv, mask=valid, other=1.0).to(tl.float32)
        c = tl.where(valid, p / n, -1.0)
        id_c = tl.where(c > best_c, offs, id_c)  # a lane keeps its first best
        best_c = tl.maximum(best_c, c)
        if HAS_DRAFT:
            q = tl.load(draft_ptr + t * s_dt + offs * s_dv, mask=valid, other=0.0).to(tl.float32)
            r = tl.where(valid, tl.maximum(p - q, 0.0) / n, 0.0)
            id_r = tl.where(r > best_r, offs, id_r)
            best_r = tl.maximum(best_r, r)
    top_c = tl.max(best_c, axis=0)
    choice = tl.min(tl.where(best_c == top_c, id_c, vocab), axis=0)
    recovered = choice
    if HAS_DRAFT:
        top_r = tl.max(best_r, axis=0)
        first_r = tl.min(tl.where((best_r == top_r) & (best_r > 0.0), id_r, vocab), axis=0)
        recovered = tl.where(top_r > 0.0, first_r, choice)
    return recovered.to(tl.int64), choice.to(tl.int64)


@triton.jit
def _rejection_kernel(ids_ptr, draft_ptr, target_ptr, bonus_ptr, u_ptr, noise_ptr, starts_ptr, out_ptr, vocab,
                      s_tt, s_tv, s_dt, s_dv, s_nt, s_nv, s_ob, s_bonus,
                      HAS_DRAFT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + b).to(tl.int64)
    n = tl.load(starts_ptr + b + 1).to(tl.int64) - start
    done = tl.zeros((), tl.int32)
    for i in range(0, n):
        if done == 0:
            t = start + i
            tok = tl.load(ids_ptr + t).to(tl.int64)
            if HAS_DRAFT:
                p_t = tl.load(target_ptr + t * s_tt + tok * s_tv).to(tl.float32)
                p_d = tl.load(draft_ptr + t * s_dt + tok * s_dv).to(tl.float32)
                u = tl.load(u_ptr + t).to(tl.float32)
                accepted = (p_t > 0.0) & (u * p_d <= p_t)
                emit = tok
                if accepted == 0:
                    emit, _c = _choices(target_ptr, draft_ptr, noise_ptr, t, vocab, s_tt, s_tv, s_dt, s_dv, s_nt,
                                        s_nv, True, BLOCK)
                    done = tl.full((), 1, tl.int32)
            else:
                _r, choice = _choices(target_ptr, draft_ptr, noise_ptr, t, vocab, s_tt, s_tv, s_dt, s_dv, s_nt,
                                      s_nv, False, BLOCK)
                emit = choice
                done = tl.where(tok == choice, 0, 1)
            tl.store(out_ptr + b * s_ob + i, emit)
    if done == 0:
        tl.store(out_ptr + b * s_ob + n, tl.load(bonus_ptr + b * s_bonus).to(tl.int64))


@annotate("rejection_sample")
@torch_arguments
def rejection_sample(draft_token_ids: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
                     bonus_token_ids: torch.Tensor, *, uniforms: torch.Tensor, recovery_noise: torch.Tensor,
                     num_draft_tokens, validate: bool = True) -> torch.Tensor:
    """Triton ``rejection_sample``: ``int64 [B, max(num_draft_tokens) + 1]`` (see the module docstring).
    ``num_draft_tokens`` is host metadata: the plan (offsets, output width) never reads a device value."""
    counts, vocab = check_rejection(draft_token_ids, draft_probs, target_probs, bonus_token_ids, uniforms,
                                    recovery_noise, num_draft_tokens, validate)
    check_launch_device("target_probs", target_probs)
    device = target_probs.device
    batch = counts.size
    out = torch.full((batch, int(counts.max(initial=0)) + 1), -1, dtype=torch.int64, device=device)
    if batch == 0:
        return out
    starts = torch.zeros(batch + 1, dtype=torch.int64)
    starts[1:] = torch.from_numpy(counts).cumsum(0)
    starts = starts.to(device)  # host -> device: no read
    bonus = bonus_token_ids.reshape(batch, -1)
    draft = draft_probs if draft_probs is not None else target_probs
    _rejection_kernel[(batch,)](draft_token_ids, draft, target_probs, bonus, uniforms, recovery_noise, starts, out,
                                vocab, *target_probs.stride(), *draft.stride(), *recovery_noise.stride(),
                                out.stride(0), bonus.stride(0),
                                HAS_DRAFT=draft_probs is not None, BLOCK=BLOCK, num_warps=4)
    return out
