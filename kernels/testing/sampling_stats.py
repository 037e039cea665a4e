"""The statistical oracle for samplers that draw their own randomness (``noise=None``), and for the
distribution guarantees of the exact ones (``rejection_sample`` emits tokens distributed as the target).

Two verdicts on ``N`` samples per row against the float64 distribution ``q`` (``kept_probabilities``):

1. **support**: no sample outside the tokens a float32 implementation may keep (``kept_sets``'s possibly kept
   set). A right sampler never fails it: its false-alarm probability is 0.
2. **goodness of fit**: each row's kept tokens are put in bins (every token of probability >= ``min_bin``
   alone, the rest of the kept set together); bin b's count ``c_b`` is Binomial(N, q_b) under H0, and the bin is
   rejected when ``N * KL(c_b / N || q_b) >= L``. By the Chernoff bound each side of that region has probability
   <= ``exp(-L)`` under H0, so with ``L = log(2 n / alpha)`` over ``n`` bins in all the probability that a right
   sampler fails anywhere is at most ``alpha`` (union bound): computed, not guessed (``alpha = 1e-6``).
   A row whose possibly-kept set differs from its surely-kept set (a near tie at a boundary, where a float32
   sampler may keep a token the float64 one drops) gets the support check only.

Power (``detection_probability``): the exact binomial probability that a bin is rejected when its true
probability is ``q_alt``. For a sampler that never emits a kept token of probability ``q`` (it dropped it), the
count is 0 and the bin is rejected with certainty once ``N * -log(1 - q) >= L``: at ``q = 1%`` and ``n = 50``
bins, ``N >= 1962``.

flashinfer-bench's rule (``tv_rule``): the total-variation distance between the empirical and the expected
distribution at most 0.2. A sampler that drops a token of 1% mass is 0.01 away: the rule passes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 1e-6  # the false-alarm probability of one run of the goodness-of-fit test, over all its bins
MIN_BIN = 0.002  # tokens of smaller probability share the kept set's tail bin


def kl_bernoulli(a, q):
    """``KL(a || q)`` for Bernoulli(a) against Bernoulli(q), elementwise (0 log 0 = 0)."""
    a, q = np.asarray(a, dtype=np.float64), np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(a > 0, a * np.log(a / q), 0.0)
        t2 = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - q)), 0.0)
    return t1 + t2


def threshold(num_bins: int, alpha: float = ALPHA) -> float:
    """``L = log(2 n / alpha)``: each bin's two Chernoff tails at most ``exp(-L)``, ``n`` bins: at most alpha."""
    return math.log(2 * max(num_bins, 1) / alpha)


def bins(q_row: np.ndarray, min_bin: float = MIN_BIN) -> list[np.ndarray]:
    """One row's bins: each kept token of probability >= ``min_bin`` alone, then the rest of the kept set."""
    kept = np.flatnonzero(q_row > 0)
    big = kept[q_row[kept] >= min_bin]
    small = kept[q_row[kept] < min_bin]
    return [np.array([j]) for j in big] + ([small] if small.size else [])


def _binomial_pmf(n: int, q: float) -> np.ndarray:
    c = np.arange(n + 1)
    lg = np.array([math.lgamma(v + 1) for v in range(n + 1)])
    with np.errstate(divide="ignore"):
        log_pmf = lg[n] - lg - lg[::-1] + c * np.log(q) + (n - c) * np.log1p(-q)
    return np.exp(log_pmf)


def detection_probability(q: float, q_alt: float, n: int, level: float) -> float:
    """The probability that a bin of H0 probability ``q`` is rejected (``N * KL(c/N || q) >= level``) when the
    sampler's true probability is ``q_alt``, over ``n`` samples: exact, from the binomial distribution."""
    c = np.arange(n + 1)
    reject = n * kl_bernoulli(c / n, q) >= level
    return float(_binomial_pmf(n, q_alt)[reject].sum()) if 0 < q_alt < 1 else float(reject[int(round(q_alt * n))])


@dataclass
class Fit:
    ok: bool
    detail: str  # empty when ok; otherwise the first failing rows and bins
    num_bins: int  # n: the bins tested
    level: float  # L
    alpha: float  # the false-alarm probability the level guarantees
    outside: int  # samples outside the possibly-kept sets
    tested_rows: int  # rows with the goodness-of-fit test (the others: support only)


def judge_samples(samples: np.ndarray, q: np.ndarray, sure: np.ndarray, maybe: np.ndarray,
                  alpha: float = ALPHA, min_bin: float = MIN_BIN) -> Fit:
    """``samples`` int ``[R, N]`` (N draws of row r), ``q`` float64 ``[R, V]`` (the rows' distributions),
    ``sure``/``maybe`` bool ``[R, V]`` (``kept_sets``): the support check, then the goodness of fit."""
    rows, n = samples.shape
    problems = []
    outside = 0
    for r in range(rows):
        s = samples[r]
        ok = (s >= 0) & (s < q.shape[1])
        ok[ok] = maybe[r, s[ok]]
        outside += int((~ok).sum())
        if not ok.all():
            problems.append(f"row {r}: {int((~ok).sum())} samples outside the kept set (e.g. {s[~ok][:3].tolist()})")
    tested = [r for r in range(rows) if (sure[r] == maybe[r]).all() and q[r].sum() > 0]
    row_bins = {r: bins(q[r], min_bin) for r in tested}
    num_bins = sum(len(b) for b in row_bins.values())
    level = threshold(num_bins, alpha)
    for r in tested:
        counts = np.bincount(np.clip(samples[r], 0, q.shape[1] - 1), minlength=q.shape[1])
        for b in row_bins[r]:
            qb, cb = float(q[r, b].sum()), int(counts[b].sum())
            if qb >= 1.0:
                continue  # a one-bin row: the support check is the whole test
            stat = n * float(kl_bernoulli(cb / n, qb))
            if stat >= level:
                what = f"token {int(b[0])}" if b.size == 1 else f"{b.size} tail tokens"
                problems.append(f"row {r}: {what} drawn {cb} times in {n}, expected {qb * n:.1f} "
                                f"(N KL = {stat:.1f} >= L = {level:.1f})")
    return Fit(not problems, "; ".join(problems[:6]), num_bins, level, alpha, outside, len(tested))


def tv_rule(samples: np.ndarray, q: np.ndarray, limit: float = 0.2) -> tuple[bool, float]:
    """flashinfer-bench's rule: passes when every row's empirical distribution is within total variation
    ``limit`` of ``q``; returns (passes, the largest distance)."""
    worst = 0.0
    for r in range(samples.shape[0]):
        emp = np.bincount(np.clip(samples[r], 0, q.shape[1] - 1), minlength=q.shape[1]) / samples.shape[1]
        worst = max(worst, 0.5 * float(np.abs(emp - q[r]).sum()))
    return worst <= limit, worst


def draw_samples(fn, logits, num_samples: int, **params) -> np.ndarray:
    """``int [R, num_samples]``: ``fn`` (a sampler with its own randomness) called once on every row repeated
    ``num_samples`` times (per-row tensor parameters repeated alike)."""
    import torch  # deferred: numpy users of this module need no torch

    rows = logits.shape[0]
    rep = logits.repeat_interleave(num_samples, dim=0)
    kw = {k: (v.repeat_interleave(num_samples) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
    out = fn(rep, noise=None, **kw)
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return out.astype(np.int64).reshape(rows, num_samples)
