"""Top-k/top-p sampling by the exponential race, without sorting the vocabulary (see docs/contract.md).

The kept set of a row is an upper set of the scaled logits ``s = logits / T``: ``{j : s_j >= theta}``. The kernel
finds ``theta`` by counting, never by sorting. One program per row:

1. **max pass** (reads the row): the largest logit, its lowest id (the ``temperature == 0`` answer) and whether
   the row holds NaN or ``+inf`` (its sample is -1, as is an all ``-inf`` row's).
2. **pivot pass** (reads the row): for ``NUM_PIVOTS`` thresholds ``m - j * PIVOT_STEP`` (log-probability units
   below the maximum ``m``; the last one ``-inf``), how many tokens lie at or above each and their mass
   ``sum exp(s - m)``. The highest pivot whose upper set surely holds the kept set (at least ``k`` tokens when
   top-k is on; else, with top-p on, a mass of at least ``top_p`` of the row's, with a 1e-3 margin over float32
   rounding) bounds ``theta`` from below. When that upper set holds more than ``CANDIDATES`` tokens, a second
   pivot pass splits the step above it in ``NUM_PIVOTS`` (a fourth read of the row).
3. **compaction pass** (reads the row): when that upper set has at most ``CANDIDATES`` tokens, their ids are
   written in increasing order to a per-row scratch row and read back into registers with their logits.
   ``theta`` is then found exactly among them by bisection on the float bits (``_order_key``: an int32 whose
   order is the floats' order): the k-th largest ``s`` (32 halvings, each a count), then the smallest ``s``
   whose strictly-greater top-k mass is below ``top_p`` times the top-k mass (33 halvings, each a sum). The race
   ``argmax(exp(s - m) / noise)`` (ties to the lower id) runs over the kept candidates, gathering their noise.

So a row costs three (or four) reads of its logits, plus 12 bytes per candidate and 4 per kept token. A row whose kept set
may hold more than ``CANDIDATES`` tokens (top-p near 1 over a flat distribution, top-k above ``CANDIDATES``)
takes the slow path: the same two bisections with each count or sum a pass over the row (up to 66 passes), then
a race pass; correct, not fast. With neither top-k nor top-p active (``top_k`` off, ``top_p == 1``) the race
runs over the whole row after the max pass.

``noise=None`` draws the Exp(1) noise inside the kernel (``-log`` of ``tl.rand`` at the token's flat index, the
seed from torch's host generator): only the kept candidates' noise is ever made.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.nvtx import annotate
from kernels.reference.sampling import check_sample
from kernels.triton.common import check_launch_device
from kernels.validate import require, torch_arguments

CANDIDATES = 2048  # the largest candidate set resolved in registers (per row)
NUM_PIVOTS = 16  # thresholds counted by the pivot pass (the last one -inf: every token)
PIVOT_STEP = 2.0  # log-probability units between pivots: they span [m - 28, m]
BLOCK = 1024  # tokens per step of the max, compaction and race passes
PIVOT_BLOCK = 128  # tokens per step of the pivot pass ([PIVOT_BLOCK, NUM_PIVOTS] comparisons a step)
COMPACT_BLOCK = 4096  # tokens per step of the compaction pass (one cumsum a step)
KEY_LO = -(2 ** 31) - 1  # below every _order_key
KEY_HI = 2 ** 31 - 1  # at or above every _order_key


@triton.jit
def _order_key(s):
    """int64 whose order is the order of the float32 ``s`` (-0.0 taken as 0.0)."""
    s = tl.where(s == 0.0, 0.0, s)
    i = s.to(tl.int32, bitcast=True)
    return (i ^ ((i >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _noise(noise_ptr, row, ids, vocab, s_nb, s_nv, seed, mask, HAS_NOISE: tl.constexpr):
    """The Exp(1) noise of tokens ``ids`` of ``row`` (only where ``mask``: nothing else is read or drawn)."""
    if HAS_NOISE:
        n = tl.load(noise_ptr + row * s_nb + ids * s_nv, mask=mask, other=1.0).to(tl.float32)
    else:
        u = tl.rand(seed, (row * vocab + ids).to(tl.int32))
        n = -tl.log(u)  # u = 0 gives +inf: that token's key is 0 (probability 2**-24 per kept token)
    return n


@triton.jit
def _row_count_mass(row_l, vocab, s_lv, inv_t, m, x, kth, STRICT: tl.constexpr, BLOCK: tl.constexpr):
    """One pass over the row: (count, mass) of the tokens with key >= kth and key >= x (``STRICT``: > x); mass
    is ``sum exp(s - m)``, accumulated per lane and summed once."""
    cnt = tl.zeros((BLOCK,), tl.int32)
    mass = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        valid = offs < vocab
        s = tl.load(row_l + offs * s_lv, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
        key = _order_key(s)
        if STRICT:
            sel = valid & (key > x) & (key >= kth)
        else:
            sel = valid & (key >= x) & (key >= kth)
        cnt += sel.to(tl.int32)
        mass += tl.where(sel, tl.exp(s - m), 0.0)
    return tl.sum(cnt, axis=0), tl.sum(mass, axis=0)


@triton.jit
def _pick_pivot(cnt, mass, piv, jj, k, k_on, p_on, top_p, z, NUM_PIVOTS: tl.constexpr):
    """The highest pivot that keeps enough (``>= k`` tokens with top-k on; mass ``>= top_p`` of the row, with a
    float32 margin, with top-p on; the last pivot always holds): ``(its index, tokens at or above it, its value)``."""
    ok = (cnt.to(tl.int64) >= k) | (k_on == 0)
    ok = ok & (k_on | (p_on == 0) | (mass >= top_p * z * 1.001))
    ok = ok | (jj == NUM_PIVOTS - 1)
    pick = tl.min(tl.where(ok, jj, NUM_PIVOTS - 1), axis=0)
    n_cand = tl.sum(tl.where(jj == pick, cnt, 0), axis=0)
    cut = tl.sum(tl.where(jj == pick, piv, 0.0), axis=0)
    return pick, n_cand, cut


@triton.jit
def _pivot_counts(row_l, vocab, s_lv, inv_t, m, piv, NUM_PIVOTS: tl.constexpr, PIVOT_BLOCK: tl.constexpr):
    """One pass over the row: (count, mass) of the tokens at or above each pivot, accumulated per lane and summed
    once; mass is ``sum exp(s - m)``."""
    lane_cnt = tl.zeros((PIVOT_BLOCK, NUM_PIVOTS), tl.int32)
    lane_mass = tl.zeros((PIVOT_BLOCK, NUM_PIVOTS), tl.float32)
    for start in range(0, vocab, PIVOT_BLOCK):
        offs = start + tl.arange(0, PIVOT_BLOCK)
        valid = offs < vocab
        s = tl.load(row_l + offs * s_lv, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
        ge = valid[:, None] & (s[:, None] >= piv[None, :])
        lane_cnt += ge.to(tl.int32)
        lane_mass += tl.where(ge, tl.exp(s - m)[:, None], 0.0)
    return tl.sum(lane_cnt, axis=0), tl.sum(lane_mass, axis=0)


@triton.jit
def _sample_kernel(logits_ptr, noise_ptr, temp_ptr, topk_ptr, topp_ptr, out_ptr, cand_ptr, vocab, seed,
                   s_lb, s_lv, s_nb, s_nv,
                   HAS_NOISE: tl.constexpr, CANDIDATES: tl.constexpr, NUM_PIVOTS: tl.constexpr,
                   PIVOT_STEP: tl.constexpr, BLOCK: tl.constexpr, PIVOT_BLOCK: tl.constexpr,
                   COMPACT_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    temp = tl.load(temp_ptr + row).to(tl.float32)
    k = tl.load(topk_ptr + row).to(tl.int64)
    top_p = tl.load(topp_ptr + row).to(tl.float32)
    row_l = logits_ptr + row * s_lb
    lanes = tl.arange(0, BLOCK)

    # 1. max pass, per lane: the largest logit (NaN and +inf read as +inf: such a row samples -1), its first id
    lane_max = tl.full((BLOCK,), float("-inf"), tl.float32)
    lane_id = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, vocab, BLOCK):
        offs = start + lanes
        l = tl.load(row_l + offs * s_lv, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        l = tl.where(l != l, float("inf"), l)
        lane_id = tl.where(l > lane_max, offs, lane_id)  # strictly greater: a lane keeps its first maximum
        lane_max = tl.maximum(lane_max, l)
    lmax = tl.max(lane_max, axis=0)
    amax = tl.min(tl.where(lane_max == lmax, lane_id, vocab), axis=0).to(tl.int64)

    k_on = (k > 0) & (k < vocab)
    p_on = top_p < 1.0
    result = tl.full((), -1, tl.int64)
    if (lmax < float("inf")) & (lmax > float("-inf")):
        if temp == 0.0:
            result = amax
        else:
            inv_t = 1.0 / temp
            m = lmax * inv_t  # the max of s: l -> l * inv_t is monotone
            kth = tl.full((), -(2 ** 31) - 1, tl.int64)  # key of the k-th largest s (below every key: all)
            xp = tl.full((), -(2 ** 31) - 1, tl.int64)  # key of the smallest s top-p keeps
            fast = tl.zeros((), tl.int32)
            if k_on | p_on:
                # 2. pivot pass: tokens and mass at or above each pivot (the last: -inf, the whole row)
                jj = tl.arange(0, NUM_PIVOTS)
                piv = tl.where(jj == NUM_PIVOTS - 1, float("-inf"), m - jj.to(tl.float32) * PIVOT_STEP)
                cnt, mass = _pivot_counts(row_l, vocab, s_lv, inv_t, m, piv, NUM_PIVOTS, PIVOT_BLOCK)
                z = tl.sum(tl.where(jj == NUM_PIVOTS - 1, mass, 0.0), axis=0)  # the row's mass
                pick, n_cand, cut = _pick_pivot(cnt, mass, piv, jj, k, k_on, p_on, top_p, z, NUM_PIVOTS)
                cut = tl.where(pick == NUM_PIVOTS - 1, float("-inf"), cut)
                if (n_cand > CANDIDATES) & (pick > 0) & (pick < NUM_PIVOTS - 1):
                    # 2b. too many: a finer pivot pass between the pick (which holds) and the pivot above it
                    above = m - (pick - 1).to(tl.float32) * PIVOT_STEP
                    piv = tl.where(jj == NUM_PIVOTS - 1, cut,
                                   above - (jj + 1).to(tl.float32) * (PIVOT_STEP / NUM_PIVOTS))
                    cnt, mass = _pivot_counts(row_l, vocab, s_lv, inv_t, m, piv, NUM_PIVOTS, PIVOT_BLOCK)
                    pick, n_cand, cut = _pick_pivot(cnt, mass, piv, jj, k, k_on, p_on, top_p, z, NUM_PIVOTS)
                if n_cand <= CANDIDATES:
                    fast = tl.full((), 1, tl.int32)
                    # 3. compaction pass: the candidates' ids (s >= cut), in increasing order
                    base = tl.zeros((), tl.int32)
                    for start in range(0, vocab, COMPACT_BLOCK):
                        offs = start + tl.arange(0, COMPACT_BLOCK)
                        valid = offs < vocab
                        s = tl.load(row_l + offs * s_lv, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
                        sel = (valid & (s >= cut)).to(tl.int32)
                        upto = tl.cumsum(sel, axis=0)
                        tl.store(cand_ptr + row * CANDIDATES + base + upto - 1, offs, mask=sel != 0)
                        base += tl.max(upto, axis=0)
                    tl.debug_barrier()
                    ci = tl.arange(0, CANDIDATES)
                    has = ci < n_cand
                    ids = tl.load(cand_ptr + row * CANDIDATES + ci, mask=has, other=0).to(tl.int64)
                    cs = tl.load(row_l + ids * s_lv, mask=has, other=float("-inf")).to(tl.float32) * inv_t
                    ckey = _order_key(cs)
                    ce = tl.where(has, tl.exp(cs - m), 0.0)
                    if k_on:  # the k-th largest key: the largest x with count(key >= x) >= k
                        lo = tl.full((), -(2 ** 31), tl.int64)
                        hi = tl.full((), 2 ** 31, tl.int64)
                        for _ in range(32):
                            mid = lo + (hi - lo) // 2
                            c = tl.sum((has & (ckey >= mid)).to(tl.int32), axis=0).to(tl.int64)
                            lo = tl.where(c >= k, mid, lo)
                            hi = tl.where(c >= k, hi, mid)
                        kth = lo
                    if p_on:  # the smallest x whose strictly-greater top-k mass is below top_p * M_K
                        ck = tl.where(has & (ckey >= kth), ce, 0.0)
                        total = tl.where(k_on, tl.sum(ck, axis=0), z)
                        target = top_p * total
                        lo = tl.full((), -(2 ** 31) - 1, tl.int64)
                        hi = tl.full((), 2 ** 31 - 1, tl.int64)
                        for _ in range(33):
                            mid = lo + (hi - lo) // 2
                            f = tl.sum(tl.where(ckey > mid, ck, 0.0), axis=0)
                            lo = tl.where(f < target, lo, mid)
                            hi = tl.where(f < target, mid, hi)
                        xp = hi
                    kept = has & (ckey >= kth) & (ckey >= xp) & (ce > 0.0)
                    noise = _noise(noise_ptr, row, ids, vocab, s_nb, s_nv, seed, kept, HAS_NOISE)
                    race = tl.where(kept, ce / noise, -1.0)
                    best = tl.max(race, axis=0)
                    result = tl.min(tl.where(kept & (race == best), ids, vocab), axis=0).to(tl.int64)
                else:  # the slow path: the same bisections, each step a pass over the row
                    if k_on:
                        lo = tl.full((), -(2 ** 31), tl.int64)
                        hi = tl.full((), 2 ** 31, tl.int64)
                        for _ in range(32):
                            mid = lo + (hi - lo) // 2
                            c, _f = _row_count_mass(row_l, vocab, s_lv, inv_t, m, mid, kth, False, BLOCK)
                            lo = tl.where(c.to(tl.int64) >= k, mid, lo)
                            hi = tl.where(c.to(tl.int64) >= k, hi, mid)
                        kth = lo
                    if p_on:
                        _c, total = _row_count_mass(row_l, vocab, s_lv, inv_t, m, kth, kth, False, BLOCK)
                        target = top_p * total
                        lo = tl.full((), -(2 ** 31) - 1, tl.int64)
                        hi = tl.full((), 2 ** 31 - 1, tl.int64)
                        for _ in range(33):
                            mid = lo + (hi - lo) // 2
                            _c, f = _row_count_mass(row_l, vocab, s_lv, inv_t, m, mid, kth, True, BLOCK)
                            lo = tl.where(f < target, lo, mid)
                            hi = tl.where(f < target, mid, hi)
                        xp = hi
            if fast == 0:
                # the race over the whole row (kept: key >= kth and key >= xp, positive probability), per lane
                lane_best = tl.full((BLOCK,), -1.0, tl.float32)
                lane_tok = tl.zeros((BLOCK,), tl.int32)
                for start in range(0, vocab, BLOCK):
                    offs = start + lanes
                    valid = offs < vocab
                    s = tl.load(row_l + offs * s_lv, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
                    bits = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True)
                    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)  # _order_key, inline
                    e = tl.exp(s - m)
                    kept = valid & (key >= kth) & (key >= xp) & (e > 0.0)
                    if HAS_NOISE:
                        noise = tl.load(noise_ptr + row * s_nb + offs * s_nv, mask=kept, other=1.0).to(tl.float32)
                    else:
                        noise = -tl.log(tl.rand(seed, (row * vocab + offs).to(tl.int32)))
                    race = tl.where(kept, e / noise, -1.0)
                    lane_tok = tl.where(race > lane_best, offs, lane_tok)  # a lane keeps its first best
                    lane_best = tl.maximum(lane_best, race)
                best = tl.max(lane_best, axis=0)
                result = tl.min(tl.where(lane_best == best, lane_tok, vocab), axis=0).to(tl.int64)
    tl.store(out_ptr + row, result)


def _per_row(x, batch: int, dtype, device) -> torch.Tensor:
    """A per-row parameter as a device tensor ``[batch]`` (a number is filled in: no device read)."""
    if isinstance(x, torch.Tensor):  # on logits' device already (check_sample)
        return x if x.dtype == dtype else x.to(dtype)
    return torch.full((batch,), x, dtype=dtype, device=device)


@annotate("top_k_top_p_sample")
@torch_arguments
def top_k_top_p_sample(logits: torch.Tensor, *, temperature, top_k, top_p, noise: torch.Tensor | None = None,
                       validate: bool = True, candidates: int = CANDIDATES) -> torch.Tensor:
    """Triton ``top_k_top_p_sample``: ``int64 [B]``, one sample per row (see the module docstring).

    ``validate=False`` skips the value checks (temperature, top_p, noise) and reads no device value; the
    parameters may be numbers or per-row tensors. ``candidates``: the register candidate set's size (a power of
    two; a smaller one sends more rows down the slow path, which the tests use)."""
    batch, vocab = check_sample(logits, temperature, top_k, top_p, noise, validate)
    check_launch_device("logits", logits)
    require(isinstance(candidates, int) and candidates >= 16 and candidates & (candidates - 1) == 0, "candidates",
            f"must be a power of two >= 16, got {candidates!r}")
    device = logits.device
    out = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return out
    temp = _per_row(temperature, batch, torch.float32, device)
    k = _per_row(top_k, batch, torch.int64, device)
    p = _per_row(top_p, batch, torch.float32, device)
    scratch = torch.empty((batch, candidates), dtype=torch.int32, device=device)
    has_noise = noise is not None
    seed = 0 if has_noise else int(torch.randint(0, 2 ** 31 - 1, (1,)).item())  # torch's host generator
    nz = noise if has_noise else logits
    _sample_kernel[(batch,)](logits, nz, temp, k, p, out, scratch, vocab, seed,
                             logits.stride(0), logits.stride(1), nz.stride(0), nz.stride(1),
                             HAS_NOISE=has_noise, CANDIDATES=candidates, NUM_PIVOTS=NUM_PIVOTS,
                             PIVOT_STEP=PIVOT_STEP, BLOCK=BLOCK, PIVOT_BLOCK=PIVOT_BLOCK,
                             COMPACT_BLOCK=COMPACT_BLOCK, num_warps=8)
    return out
