"""Sampling, defined in float64 numpy: top-k/top-p sampling by an exponential race, and speculative decoding's
rejection sampling.

``top_k_top_p_sample`` (docs/contract.md, "Norms, rotary embedding, sampling"), per row of ``logits [B, V]``:

- ``s = logits / temperature``, ``p = softmax(s)``; the order of tokens is the order of ``s`` (equal logits are
  equal in every precision, so a tie is a tie for every implementation; ties in the order go to the lower id);
- top-k keeps every token whose ``s`` is >= the k-th largest ``s`` (ties kept; ``top_k <= 0`` or ``>= V`` keeps
  all);
- top-p then keeps token j of the top-k set iff the mass of the top-k tokens strictly above it,
  ``S_>(j) = sum(p_i : s_i > s_j)``, is below ``top_p * M_K`` (``M_K``: the top-k set's mass). That is exactly
  "the shortest prefix in decreasing p whose mass reaches ``top_p * M_K``, plus every token tied with its last";
- tokens of probability 0 (logit ``-inf``) are never kept;
- the sample is ``argmax(kept_p / noise)`` (ties to the lower id), ``noise ~ Exp(1)`` ``[B, V]``: the exponential
  race, which draws token j with probability ``kept_p_j / sum(kept_p)``;
- ``temperature == 0`` is the argmax of the logits (ties to the lower id), whatever ``top_k``/``top_p`` say;
- a row with no token of positive probability (all ``-inf``), or holding a NaN or ``+inf`` logit, gives ``-1``.

``sample_admissible`` says, per row, which tokens a float32 implementation of the same definition may return:
the derivation is in its docstring.

``rejection_sample``: accept draft token i while ``uniforms[i] * draft_p <= target_p`` (``uniforms[i] <=
target_p / draft_p``) and ``target_p > 0`` (a token the target rules out is never accepted, not even at
``uniforms[i] = 0``); the first rejected position emits ``argmax(max(0, target - draft) / recovery_noise)``;
all accepted emits the bonus token. With ``draft_probs=None`` (a deterministic draft) the draft is accepted while
it equals the target's choice ``argmax(target / recovery_noise)`` (the argmax when the noise is constant, a
sample of the target when it is Exp(1)), and the first mismatch emits that choice.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.reference._arrays import f64
from kernels.validate import check_ndim, check_same_device, dtype_name, host_ints, is_torch, require

SAMPLE_DTYPES = ("float16", "bfloat16", "float32")
NOISE_DTYPES = ("float32", "float64")
PROB_DTYPES = ("float16", "bfloat16", "float32")
U32 = 2.0 ** -24  # float32 unit roundoff


# --------------------------------------------------------------------------------------------- validation

def _is_scalar(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_row_param(x, batch: int, name: str, integer: bool, validate: bool = True):
    """A per-row parameter: a Python number, or a 1-D tensor/array of ``batch`` values (integers for
    ``top_k``). Reads no device value."""
    if _is_scalar(x):
        require(not integer or isinstance(x, (int, np.integer)), name, f"must be an int, got {x!r}")
        return
    require(hasattr(x, "shape") and len(x.shape) == 1 and int(x.shape[0]) == batch, name,
            f"must be a number or a 1-D tensor of {batch} values (one per row), got "
            f"{tuple(x.shape) if hasattr(x, 'shape') else type(x).__name__}")
    kind = dtype_name(x)
    if integer:
        require("int" in kind, name, f"must hold integers, got {kind}")
    else:
        require("float" in kind or "int" in kind, name, f"must hold numbers, got {kind}")


def row_values(x, batch: int) -> np.ndarray:
    """A per-row parameter as a float64 host array ``[batch]`` (one device->host copy for a tensor)."""
    if _is_scalar(x):
        return np.full(batch, float(x))
    return f64(x).reshape(batch)


def check_sample(logits, temperature, top_k, top_p, noise, validate: bool = True) -> tuple[int, int]:
    """``(B, V)``; a ``ValueError`` naming the argument. ``validate=False`` skips the checks that read values
    (temperature finite and >= 0, top_p in (0, 1], noise > 0)."""
    check_ndim(logits, 2, "logits", "[batch, vocab]")
    batch, vocab = (int(s) for s in logits.shape)
    require(vocab >= 1, "logits", "needs at least one vocabulary column")
    if is_torch(logits):
        require(dtype_name(logits) in SAMPLE_DTYPES, "logits",
                f"dtype must be one of {SAMPLE_DTYPES}, got {dtype_name(logits)}")
    check_row_param(temperature, batch, "temperature", False)
    check_row_param(top_k, batch, "top_k", True)
    check_row_param(top_p, batch, "top_p", False)
    if noise is not None:
        require(hasattr(noise, "shape") and tuple(int(s) for s in noise.shape) == (batch, vocab), "noise",
                f"must be [batch, vocab] = {(batch, vocab)}, got {tuple(getattr(noise, 'shape', ()))}")
        if is_torch(noise):
            require(dtype_name(noise) in NOISE_DTYPES, "noise", f"dtype must be one of {NOISE_DTYPES}, "
                    f"got {dtype_name(noise)}")
    check_same_device(logits=logits, **{k: v for k, v in (("temperature", temperature), ("top_k", top_k),
                                                          ("top_p", top_p), ("noise", noise)) if is_torch(v)})
    if validate:
        t, p = row_values(temperature, batch), row_values(top_p, batch)
        require(bool(np.isfinite(t).all() and (t >= 0).all()), "temperature", "must be finite and >= 0")
        require(bool(((p > 0) & (p <= 1)).all()), "top_p", "must be in (0, 1]")
        if noise is not None and batch and vocab:
            n = f64(noise)
            require(bool((n > 0).all()), "noise", "must be > 0 (Exp(1) draws; NaN, 0 and negatives are not)")
    return batch, vocab


# -------------------------------------------------------------------------------------------- the sampler

def _unusable_rows(logits: np.ndarray) -> np.ndarray:
    """Rows with no token of positive probability, or a NaN or +inf logit: their sample is -1."""
    return np.isnan(logits).any(axis=1) | (logits == np.inf).any(axis=1) | ~(logits > -np.inf).any(axis=1)


def _mass_above(s: np.ndarray, weights: np.ndarray, v, side: str = "right"):
    """``sum(weights[i] : s_i > v)`` (``side="right"``) or ``s_i >= v`` (``"left"``), for each value of ``v``."""
    order = np.argsort(s, kind="stable")
    suffix = np.append(np.cumsum(weights[order][::-1])[::-1], 0.0)
    return suffix[np.searchsorted(s[order], v, side=side)]


def _kept_row(s: np.ndarray, k: int, top_p: float) -> np.ndarray:
    """The kept set of one row of scaled logits ``s`` (finite max): top-k (ties kept), then top-p over it."""
    p = np.exp(s - s.max())
    p /= p.sum()
    kth = np.sort(s)[::-1][k - 1] if 0 < k < s.size else -np.inf
    in_k = s >= kth
    above = _mass_above(s, np.where(in_k, p, 0.0), s)  # S_>(j): top-k mass strictly above s_j
    in_p = above < top_p * p[in_k].sum() if top_p < 1 else True  # p = 1 keeps all, however small
    return in_k & in_p & (p > 0)


def top_k_top_p_sample(logits, *, temperature, top_k, top_p, noise=None):
    """``int64 [B]``: each row's sample (see the module docstring); ``noise=None`` draws fresh Exp(1) noise."""
    batch, vocab = check_sample(logits, temperature, top_k, top_p, noise)
    x = f64(logits)
    t, p = row_values(temperature, batch), row_values(top_p, batch)
    k = row_values(top_k, batch).astype(np.int64)
    e = np.random.default_rng().exponential(size=(batch, vocab)) if noise is None else f64(noise)
    out = np.full(batch, -1, dtype=np.int64)
    bad = _unusable_rows(x)
    for r in range(batch):
        if bad[r]:
            continue
        if t[r] == 0:
            out[r] = int(np.argmax(x[r]))  # first maximum: ties to the lower id
            continue
        s = x[r] / t[r]
        kept = _kept_row(s, int(k[r]), float(p[r]))
        prob = np.exp(s - s.max())
        prob /= prob.sum()
        out[r] = int(np.argmax(np.where(kept, prob / e[r], -1.0)))
    return out


def kept_probabilities(logits, *, temperature, top_k, top_p) -> np.ndarray:
    """``float64 [B, V]``: each row's sampling distribution (the kept probabilities renormalised; one-hot at the
    argmax for temperature 0; all zero for a row whose sample is -1). The statistical oracle's H0."""
    batch, vocab = check_sample(logits, temperature, top_k, top_p, None)
    x = f64(logits)
    t, p = row_values(temperature, batch), row_values(top_p, batch)
    k = row_values(top_k, batch).astype(np.int64)
    q = np.zeros((batch, vocab))
    bad = _unusable_rows(x)
    for r in range(batch):
        if bad[r]:
            continue
        if t[r] == 0:
            q[r, int(np.argmax(x[r]))] = 1.0
            continue
        s = x[r] / t[r]
        kept = _kept_row(s, int(k[r]), float(p[r]))
        w = np.where(kept, np.exp(s - s.max()), 0.0)
        q[r] = w / w.sum()
    return q


# ----------------------------------------------------------------------------- what float32 may change

def log_rounding(s: np.ndarray, m: float) -> np.ndarray:
    """The largest error of a float32 implementation's log-probability ``s_j - m``, per token: ``s = l / T``
    (reciprocal and product: 2u|s|), the maximum likewise (2u|m|), ``s - m`` (u|s - m|), ``exp`` as
    ``exp2(x log2 e)`` (u|s - m| for the product, <= 3u for a GPU's ``ex2.approx``): at most
    ``4u (|s| + |m|) + 3u``; twice that, for margin: ``8u (|s| + |m| + 1)``."""
    return 8 * U32 * (np.abs(np.where(np.isfinite(s), s, 0.0)) + abs(m) + 1)


def mass_rounding(n: int) -> float:
    """The relative error of a float32 sum of n non-negative terms accumulated in at least 128 lanes, each lane
    sequentially, then a tree over the lanes (this project's kernel; torch's and Triton's blocked reductions and
    pairwise sums do better): ``u (ceil(log2 n) + ceil(n / 128))``."""
    return U32 * (math.ceil(math.log2(max(n, 2))) + math.ceil(n / 128))


def sample_admissible(logits, *, temperature, top_k, top_p, noise) -> tuple[np.ndarray, np.ndarray]:
    """``(token int64 [B], admissible bool [B, V])``: the reference's sample, and every token a float32
    implementation of the same definition may return (the reference's among them; a row whose sample is -1 has
    none: only -1 is right). A row is *clear* when its admissible set is the reference's token alone.

    Derivation. A float32 implementation errs from the float64 definition only through rounding:

    1. its log-probabilities ``s_j - m`` are off by at most ``eps_j = log_rounding(s_j, m)`` each, so two tokens
       whose distinct logits have ``|s_i - s_j| <= eps_i + eps_j`` may compare either way (equal logits compare
       equal in every precision: an exact tie is never "near");
    2. its masses (``M_K``, ``S_>(j)``) are off by at most ``sum(e_i eps_i)`` over their terms (each term's own
       error) plus ``mass_rounding(V)`` of the sum, and the target by one more rounding (the product with top_p);
    3. its race keys ``p_j / noise_j`` by ``eps_j + 8u (|log noise_j| + 1)`` (a log or a division of the noise).

    So: top-k keeps j *surely* when fewer than k tokens may be above it (``s_i > s_j - 2w``, ties excluded),
    *possibly* when fewer than k are surely above (``s_i > s_j + 2w``); ``M_K`` lies between the masses of the
    surely and possibly kept sets, times ``1 -+ g``; top-p keeps j surely when the largest ``S_>(j)`` it may
    compute (the possibly kept tokens that may be above) is below the smallest target, possibly when the
    smallest is below the largest target (``top_p = 1`` keeps every token of positive probability: an
    implementation must not lose the tail to rounding). A token is admissible when it is possibly kept and its key, at its
    most favourable rounding, reaches the best surely-kept key at its least favourable rounding; a twin of the
    winner (same logit, same noise, higher id) loses in every precision and is not admissible.
    """
    batch, vocab = check_sample(logits, temperature, top_k, top_p, noise)
    x = f64(logits)
    t, p = row_values(temperature, batch), row_values(top_p, batch)
    k = row_values(top_k, batch).astype(np.int64)
    e = f64(noise)
    token = top_k_top_p_sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, noise=noise)
    adm = np.zeros((batch, vocab), dtype=bool)
    bad = _unusable_rows(x)
    for r in range(batch):
        if bad[r]:
            continue
        if t[r] == 0:  # comparisons of the logits themselves: exact in every precision
            adm[r, token[r]] = True
            continue
        adm[r] = _admissible_row(x[r] / t[r], int(k[r]), float(p[r]), e[r], int(token[r]))
    return token, adm


def kept_bounds(s: np.ndarray, k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """``(surely, possibly)`` kept, bool ``[V]``, for one row of scaled logits ``s`` (finite max): the kept sets a
    float32 implementation may compute lie between the two (``sample_admissible``'s derivation, steps 1-2)."""
    vocab = s.size
    m = s.max()
    finite = s > -np.inf
    eps = log_rounding(s, m)
    w2 = 2 * eps * (1 + 1e-5)  # |s_i - s_j| within eps_i + eps_j, for i near j
    e = np.where(finite, np.exp(s - m), 0.0)
    asc = np.sort(s)

    def count_above(v, side):  # tokens with s > v ("right") or s >= v ("left")
        return vocab - np.searchsorted(asc, v, side=side)

    ties = count_above(s, "left") - count_above(s, "right")  # j's tie group, j included
    if 0 < k < vocab:
        sure_k = count_above(s - w2, "right") - ties < k  # fewer than k may be above j
        maybe_k = count_above(s + w2, "right") < k  # fewer than k are surely above j
    else:
        sure_k = maybe_k = np.ones(vocab, dtype=bool)
    rel = mass_rounding(vocab)

    def bounds(kept, v):  # (mass of ``kept`` above v, its rounding error)
        mass = _mass_above(s, np.where(kept, e, 0.0), v)
        return mass, _mass_above(s, np.where(kept, e * eps, 0.0), v) + rel * mass

    mass_maybe, err_maybe = bounds(maybe_k, -np.inf)
    mass_sure, err_sure = bounds(sure_k, -np.inf)
    target_lo, target_hi = top_p * (mass_sure - err_sure) * (1 - U32), top_p * (mass_maybe + err_maybe) * (1 + U32)
    above_hi, err_hi = bounds(maybe_k, s - w2)
    tie_mass = _mass_above(s, np.where(maybe_k, e, 0.0), s, "left") - _mass_above(s, np.where(maybe_k, e, 0.0), s)
    tie_err = _mass_above(s, np.where(maybe_k, e * eps, 0.0), s, "left") - _mass_above(s, np.where(maybe_k, e * eps, 0.0), s)
    above_lo, err_lo = bounds(sure_k, s + w2)
    s_hi = above_hi - tie_mass + err_hi - tie_err  # the largest S_>(j) it may compute
    s_lo = above_lo - err_lo
    if top_p < 1:
        sure_p, maybe_p = s_hi < target_lo, s_lo < target_hi
    else:
        sure_p = maybe_p = np.ones(vocab, dtype=bool)
    return sure_k & sure_p & finite, maybe_k & maybe_p & finite


def _admissible_row(s: np.ndarray, k: int, top_p: float, noise: np.ndarray, winner: int) -> np.ndarray:
    vocab = s.size
    m = s.max()
    finite = s > -np.inf
    eps = log_rounding(s, m)
    sure, maybe = kept_bounds(s, k, top_p)
    sure[winner] = maybe[winner] = True  # the reference's kept set lies between the two
    with np.errstate(divide="ignore"):
        key = np.where(finite, s - m, -np.inf) - np.log(noise)
    slack = eps + 8 * U32 * (np.abs(np.log(noise)) + 1)
    best_sure = np.max(np.where(sure, key - slack, -np.inf))
    adm = maybe & (key + slack >= best_sure)
    twins = (s == s[winner]) & (noise == noise[winner]) & (np.arange(vocab) > winner)
    adm &= ~twins
    adm[winner] = True
    return adm


# ------------------------------------------------------------------------------------ rejection sampling

def check_rejection(draft_token_ids, draft_probs, target_probs, bonus_token_ids, uniforms, recovery_noise,
                    num_draft_tokens, validate: bool = True) -> tuple[np.ndarray, int]:
    """``(num_draft_tokens as host int64 [B], vocab)``; a ``ValueError`` naming the argument.
    ``num_draft_tokens`` is host metadata (a list, tuple or numpy array: never a device read); ``validate=False``
    skips the checks that read device values (ids in range, uniforms in [0, 1), noise > 0, probs >= 0)."""
    require(not is_torch(num_draft_tokens) or str(num_draft_tokens.device) == "cpu", "num_draft_tokens",
            "is host metadata: a list of ints (or a CPU tensor)")
    counts = host_ints(np.asarray(num_draft_tokens) if not is_torch(num_draft_tokens) else num_draft_tokens,
                       "num_draft_tokens").reshape(-1)
    require(bool((counts >= 0).all()), "num_draft_tokens", "counts must be >= 0")
    total = int(counts.sum())
    check_ndim(target_probs, 2, "target_probs", "[num_draft_tokens_total, vocab]")
    vocab = int(target_probs.shape[1])
    require(int(target_probs.shape[0]) == total and vocab >= 1, "target_probs",
            f"must be [{total}, vocab >= 1] (one row per draft token), got {tuple(target_probs.shape)}")
    if draft_probs is not None:
        require(hasattr(draft_probs, "shape") and tuple(draft_probs.shape) == tuple(target_probs.shape),
                "draft_probs", f"must match target_probs {tuple(target_probs.shape)}, got "
                f"{tuple(getattr(draft_probs, 'shape', ()))}")
    check_ndim(draft_token_ids, 1, "draft_token_ids", "[num_draft_tokens_total]")
    require(int(draft_token_ids.shape[0]) == total, "draft_token_ids", f"must hold {total} ids, got "
            f"{int(draft_token_ids.shape[0])}")
    require(hasattr(bonus_token_ids, "shape") and int(np.prod(bonus_token_ids.shape)) == counts.size
            and len(bonus_token_ids.shape) in (1, 2), "bonus_token_ids",
            f"must be [batch] or [batch, 1] with batch = {counts.size}, got {tuple(getattr(bonus_token_ids, 'shape', ()))}")
    check_ndim(uniforms, 1, "uniforms", "[num_draft_tokens_total]")
    require(int(uniforms.shape[0]) == total, "uniforms", f"must hold {total} values, got {int(uniforms.shape[0])}")
    require(hasattr(recovery_noise, "shape") and tuple(recovery_noise.shape) == (total, vocab), "recovery_noise",
            f"must be [{total}, {vocab}], got {tuple(getattr(recovery_noise, 'shape', ()))}")
    for name, x, kinds in (("target_probs", target_probs, PROB_DTYPES), ("draft_probs", draft_probs, PROB_DTYPES),
                           ("uniforms", uniforms, NOISE_DTYPES), ("recovery_noise", recovery_noise, NOISE_DTYPES)):
        if x is not None and is_torch(x):
            require(dtype_name(x) in kinds, name, f"dtype must be one of {kinds}, got {dtype_name(x)}")
    for name, x in (("draft_token_ids", draft_token_ids), ("bonus_token_ids", bonus_token_ids)):
        if is_torch(x):
            require(not (x.is_floating_point() or x.is_complex()), name, f"must be an integer tensor, got {x.dtype}")
    check_same_device(draft_token_ids=draft_token_ids, draft_probs=draft_probs, target_probs=target_probs,
                      bonus_token_ids=bonus_token_ids, uniforms=uniforms, recovery_noise=recovery_noise)
    if validate:
        for name, x in (("draft_token_ids", draft_token_ids), ("bonus_token_ids", bonus_token_ids)):
            ids = host_ints(x, name)
            require(bool(((ids >= 0) & (ids < vocab)).all()), name, f"ids must be in [0, {vocab})")
        u = f64(uniforms)
        require(bool(((u >= 0) & (u < 1)).all()), "uniforms", "must be in [0, 1)")
        require(bool((f64(recovery_noise) > 0).all()), "recovery_noise", "must be > 0 (Exp(1) draws)")
        for name, x in (("target_probs", target_probs), ("draft_probs", draft_probs)):
            if x is not None:
                require(bool((f64(x) >= 0).all()), name, "must be >= 0 (probabilities; NaN is not)")
    return counts, vocab


def rejection_sample(draft_token_ids, draft_probs, target_probs, bonus_token_ids, *, uniforms, recovery_noise,
                     num_draft_tokens):
    """``int64 [B, max(num_draft_tokens) + 1]``: each request's accepted draft tokens, then the recovered token
    at its first rejection or the bonus token when all were accepted, then -1 (see the module docstring).
    An all-zero residual ``max(0, target - draft)`` (no mass left to recover) emits the target's choice
    ``argmax(target / recovery_noise)``."""
    counts, vocab = check_rejection(draft_token_ids, draft_probs, target_probs, bonus_token_ids, uniforms,
                                    recovery_noise, num_draft_tokens)
    ids = host_ints(draft_token_ids, "draft_token_ids")
    bonus = host_ints(bonus_token_ids, "bonus_token_ids").reshape(-1)
    target, u, noise = f64(target_probs), f64(uniforms), f64(recovery_noise)
    draft = None if draft_probs is None else f64(draft_probs)
    out = np.full((counts.size, int(counts.max(initial=0)) + 1), -1, dtype=np.int64)
    start = 0
    for b, n in enumerate(counts):
        for i in range(n):
            tok, t = int(ids[start + i]), start + i
            choice = int(np.argmax(target[t] / noise[t]))
            if draft is None:
                accepted, recovered = tok == choice, choice
            else:
                accepted = target[t, tok] > 0 and u[t] * draft[t, tok] <= target[t, tok]  # never p = 0
                residual = np.maximum(target[t] - draft[t], 0.0)
                recovered = int(np.argmax(residual / noise[t])) if residual.any() else choice
            out[b, i] = tok if accepted else recovered
            if not accepted:
                break
        else:
            out[b, n] = bonus[b]
        start += n
    return out


def kept_sets(logits, *, temperature, top_k, top_p) -> tuple[np.ndarray, np.ndarray]:
    """``(surely, possibly)`` kept, bool ``[B, V]``, for every row (``kept_bounds``; a greedy row: its argmax;
    a row that samples -1: none)."""
    batch, vocab = check_sample(logits, temperature, top_k, top_p, None)
    x = f64(logits)
    t, p = row_values(temperature, batch), row_values(top_p, batch)
    k = row_values(top_k, batch).astype(np.int64)
    sure, maybe = np.zeros((batch, vocab), dtype=bool), np.zeros((batch, vocab), dtype=bool)
    bad = _unusable_rows(x)
    for r in range(batch):
        if bad[r]:
            continue
        if t[r] == 0:
            sure[r, int(np.argmax(x[r]))] = maybe[r, int(np.argmax(x[r]))] = True
            continue
        sure[r], maybe[r] = kept_bounds(x[r] / t[r], int(k[r]), float(p[r]))
    return sure, maybe
