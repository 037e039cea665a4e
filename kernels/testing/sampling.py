"""Inputs and verdicts for the sampling ops (``top_k_top_p_sample``, ``rejection_sample``).

Logits are LLM-like: a Gaussian body (``spread`` nats) under a head of a few tokens raised 10 to 18 nats, stored in
the case's dtype (bfloat16 logits tie often, and a tie is a tie in every precision), with a fraction masked to
``-inf`` (grammar masks). Every logits and noise row is a view into a wider row whose padding holds NaN: a
kernel reading past the vocabulary gives -1 or garbage and fails.

Planted at the boundaries (``plant=True``), per row with temperature > 0 and top-k or top-p active:

- even rows: the k-th and (k+1)-th largest logits are made equal (top-k must keep both), and the first token
  top-p drops is raised to tie the last one it keeps (top-p must keep both); then the last kept token (the least
  probable, highest id among its ties) gets noise 1e-12, so it wins the race: an implementation that drops it, or
  a tie it must keep, returns another token;
- odd rows (no tie planted): the first dropped token (the most probable, lowest id) gets noise 1e-12: an
  implementation that keeps one token too many returns it.

A temperature-0 row has its maximum tied at a higher id (the answer is the lower), and ``empty_rows`` rows are
all ``-inf`` (the answer is -1).
"""
from __future__ import annotations

import numpy as np
import torch

from kernels.ops import Inputs
from kernels.reference._arrays import f64
from kernels.reference.sampling import _kept_row, sample_admissible
from kernels.testing.paged import torch_dtype

PLANTED_NOISE = 1e-12
PADDING = 7  # NaN columns after each row of logits and noise


def llm_logits(batch: int, vocab: int, rng, *, spread: float = 2.0, head: int = 12) -> np.ndarray:
    """float64 ``[batch, vocab]``: a Gaussian body of std ``spread`` plus ``head`` tokens per row raised by 10 to
    18 nats (a few tokens hold most of the mass, as in a language model's next-token distribution, even over a
    vocabulary of 262144 whose body sums to about e^14 at std 2)."""
    x = rng.standard_normal((batch, vocab)) * spread
    h = min(head, vocab)
    for r in range(batch):
        ids = rng.choice(vocab, h, replace=False)
        x[r, ids] += rng.uniform(10.0, 18.0, h)
    return x


def row_parameters(batch: int, vocab: int, shape: dict, rng):
    """(temperature, top_k, top_p) as float/int numpy arrays ``[batch]``: the shape's values, or, with
    ``per_row``, a mix (one greedy row, top-k only, top-p only, both, neither) cycling over the rows."""
    if not shape.get("per_row"):
        return (np.full(batch, float(shape.get("temperature", 1.0))), np.full(batch, int(shape.get("top_k", 0))),
                np.full(batch, float(shape.get("top_p", 1.0))))
    mix = [(0.0, 0, 1.0), (0.7, 20, 1.0), (1.0, 0, 0.8), (1.3, 50, 0.9), (1.0, 0, 1.0), (0.5, 1, 1.0),
           (1.0, vocab + 5, 0.5), (0.9, 7, 0.95)]
    rows = [mix[r % len(mix)] for r in range(batch)]
    return (np.array([m[0] for m in rows]), np.array([m[1] for m in rows], dtype=np.int64),
            np.array([m[2] for m in rows]))


def _store(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and back (the values the kernel will read)."""
    return torch.from_numpy(x).to(torch_dtype(dtype)).to(torch.float64).numpy()


def plant_boundaries(x: np.ndarray, noise: np.ndarray, temp, top_k, top_p, dtype: str) -> None:
    """In place: boundary ties and decisive noise (see the module docstring). ``x`` holds stored values."""
    for r in range(x.shape[0]):
        vocab = x.shape[1]
        finite = np.isfinite(x[r])
        if not finite.any():
            continue
        if temp[r] == 0:
            top = int(np.argmax(x[r]))
            twin = int(np.flatnonzero(finite)[-1])
            if twin != top:
                x[r, max(top, twin)] = x[r, min(top, twin)] = x[r, top]
            continue
        k_on, p_on = 0 < top_k[r] < vocab, top_p[r] < 1
        if not (k_on or p_on):
            continue
        s = x[r] / temp[r]
        if k_on and r % 2 == 0:  # the (k+1)-th largest ties the k-th
            order = np.argsort(-x[r], kind="stable")
            if np.isfinite(x[r, order[top_k[r]]]):
                x[r, order[top_k[r]]] = x[r, order[top_k[r] - 1]]
        s = x[r] / temp[r]
        kept = _kept_row(s, int(top_k[r]), float(top_p[r]))
        dropped = finite & ~kept
        if p_on and dropped.any() and r % 2 == 0:  # the first dropped token ties the last kept one
            last = np.flatnonzero(kept & (s == s[kept].min()))[-1]
            first = np.flatnonzero(dropped & (s == s[dropped].max()))[0]
            x[r, first] = x[r, last]
            s = x[r] / temp[r]
            kept = _kept_row(s, int(top_k[r]), float(top_p[r]))
            dropped = finite & ~kept
        if r % 2 == 0:
            target = np.flatnonzero(kept & (s == s[kept].min()))[-1]
        elif dropped.any():
            target = np.flatnonzero(dropped & (s == s[dropped].max()))[0]
        else:
            continue
        noise[r, target] = PLANTED_NOISE


def _padded(x: np.ndarray, dtype, device, pad: int) -> torch.Tensor:
    """``x`` as a ``[B, V]`` view of a ``[B, V + pad]`` tensor whose padding holds NaN."""
    b, v = x.shape
    wide = torch.full((b, v + pad), float("nan"), dtype=dtype)
    wide[:, :v] = torch.from_numpy(x).to(dtype)
    return wide.to(device)[:, :v]


def build_sample(shape: dict, device: str = "cpu", seed: int = 0) -> tuple[tuple, dict]:
    """The sampler's ``(args, kwargs)`` at ``shape`` (see the module docstring); per-row parameters as tensors
    when ``per_row``, else as numbers."""
    rng = np.random.default_rng(seed)
    batch, vocab, dtype = shape["batch"], shape["vocab"], shape["dtype"]
    x = llm_logits(batch, vocab, rng, spread=shape.get("spread", 2.0))
    masked = shape.get("masked", 0.0)
    if masked:
        x[rng.random((batch, vocab)) < masked] = -np.inf
        x[np.arange(batch), np.argmax(np.where(np.isfinite(x), x, -np.inf), axis=1)] = 5.0  # one survivor a row
    x = _store(x, dtype)
    for r in range(shape.get("empty_rows", 0)):
        x[batch - 1 - r] = -np.inf
    temp, top_k, top_p = row_parameters(batch, vocab, shape, rng)
    noise = rng.exponential(size=(batch, vocab)).astype(np.float32).astype(np.float64)
    noise = np.maximum(noise, 1e-30)
    if shape.get("plant", True):
        plant_boundaries(x, noise, temp, top_k, top_p, dtype)
    pad = PADDING if shape.get("padded", True) else 0
    logits = _padded(x, torch_dtype(dtype), device, pad)
    noise_t = _padded(noise, torch.float32, device, pad)
    if shape.get("per_row"):
        kwargs = dict(temperature=torch.from_numpy(temp).to(device, torch.float32),
                      top_k=torch.from_numpy(top_k).to(device), top_p=torch.from_numpy(top_p).to(device, torch.float32))
    else:
        kwargs = dict(temperature=float(temp[0]), top_k=int(top_k[0]), top_p=float(top_p[0]))
    return (logits,), dict(kwargs, noise=noise_t)


def admissible(inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """``sample_admissible`` on ``inputs`` as they are now (never cached: the integrity checks refill inputs in
    place)."""
    return sample_admissible(*inputs.args, **inputs.kwargs)


def sample_tolerance(inputs: Inputs, expected: dict) -> dict:
    """Token ids are judged exactly on *clear* rows (one admissible token: ``sample_admissible``); a row where
    float32 rounding may flip a near tie gets no numeric bound (inf) and is judged by ``near_tie_rows`` against
    its admissible set instead."""
    _, adm = admissible(inputs)
    clear = adm.sum(axis=1) <= 1
    return {"token": np.where(clear, 0.0, np.inf)}


def near_tie_rows(inputs: Inputs, actual: dict) -> list:
    """The rows that are not clear: the token must be one of the admissible ones."""
    token, adm = admissible(inputs)
    unclear = np.flatnonzero(adm.sum(axis=1) > 1)
    if not unclear.size:
        return []
    got = f64(actual["token"]).astype(np.int64)
    inside = [(0 <= got[r] < adm.shape[1]) and bool(adm[r, got[r]]) for r in unclear]
    bad = [int(r) for r, ok in zip(unclear, inside) if not ok]
    return [("near-tie rows", not bad,
             f"token: rows {bad[:5]} returned {[int(got[r]) for r in bad[:5]]}, outside the tokens "
             f"float32 rounding may pick ({[np.flatnonzero(adm[r])[:6].tolist() for r in bad[:5]]})",
             f"{unclear.size} near-tie rows, each token among those float32 rounding may pick")]


# ------------------------------------------------------------------------------------ rejection sampling

def draft_counts(batch: int, max_draft: int, seed: int = 0) -> list[int]:
    """Draft tokens per request: 0 to ``max_draft``, one request at ``max_draft`` and (with 3 or more) one at 0."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_draft + 1, batch)
    counts[0] = max_draft
    if batch >= 3:
        counts[1] = 0
    return [int(c) for c in counts]


def build_rejection(shape: dict, device: str = "cpu", seed: int = 0) -> tuple[tuple, dict]:
    """``rejection_sample``'s ``(args, kwargs)``: target probabilities from LLM-like logits, a draft model close to
    it (its logits perturbed by ``N(0, 0.3^2)``), draft tokens drawn from the draft (or, without draft probs, the
    target's own choice at the first positions and a random token later), uniforms in [0, 1). Planted: at every
    third position the draft token gets target probability 0 and uniform 0 (it must be rejected); rows are
    views into NaN-padded rows."""
    rng = np.random.default_rng(seed)
    counts = draft_counts(shape["batch"], shape["max_draft"], seed)
    total, vocab, dtype = sum(counts), shape["vocab"], torch_dtype(shape.get("dtype", "float32"))
    logits = llm_logits(total, vocab, rng)
    target = np.exp(logits - logits.max(1, keepdims=True))
    has_draft = shape.get("draft", "probs") == "probs"
    draft_logits = logits + 0.3 * rng.standard_normal(logits.shape)
    draft = np.exp(draft_logits - draft_logits.max(1, keepdims=True))
    draft /= draft.sum(1, keepdims=True)
    noise = np.maximum(rng.exponential(size=(total, vocab)), 1e-30)
    uniforms = rng.random(total)
    ids = np.argmax(draft / rng.exponential(size=(total, vocab)), axis=1)  # drawn from the draft
    for t in range(2, total, 3):  # planted: a token the target rules out, uniform 0
        target[t, ids[t]] = 0.0
        uniforms[t] = 0.0
    target /= target.sum(1, keepdims=True)
    target = torch.from_numpy(target).to(dtype).double().numpy()  # as stored
    if not has_draft:
        choice = np.argmax(target / noise.astype(np.float32), axis=1)
        start = 0
        for n in counts:  # the first half of each request's drafts agree with the target's choice
            ids[start:start + n // 2 + 1] = choice[start:start + n // 2 + 1]
            start += n
        ids = ids[:total]
    pad = PADDING if shape.get("padded", True) else 0
    args = (torch.from_numpy(ids).to(device),
            _padded(draft, dtype, device, pad) if has_draft else None,
            _padded(target, dtype, device, pad),
            torch.from_numpy(rng.integers(0, vocab, len(counts))).to(device))
    kwargs = dict(uniforms=torch.from_numpy(uniforms).to(device, torch.float32),
                  recovery_noise=_padded(noise, torch.float32, device, pad), num_draft_tokens=counts)
    return args, kwargs


def rejection_tolerance(args, kwargs) -> np.ndarray:
    """Per element of the output: 0 (exact) up to a row's first decision float32 rounding may flip, inf from there
    on. A decision may flip when ``u * p_draft`` and ``p_target`` are within 2u (the product's rounding, relative),
    or when the two best keys of an argmax over ``max(0, target - draft) / noise`` or ``target / noise`` are
    within 8u (a subtraction, a division and the noise's cast, each u, doubled)."""
    from kernels.reference._arrays import f64
    from kernels.reference.sampling import U32

    ids, draft, target, _ = args
    counts = kwargs["num_draft_tokens"]
    u, noise, t64 = f64(kwargs["uniforms"]), f64(kwargs["recovery_noise"]), f64(target)
    d64 = None if draft is None else f64(draft)
    ids = f64(ids).astype(np.int64)
    tol = np.zeros((len(counts), max(counts, default=0) + 1))

    def close(keys):  # the two best keys within 8u of each other (keys >= 0)
        top = np.sort(keys)[-2:]
        return top.size == 2 and top[1] > 0 and top[1] - top[0] <= 8 * U32 * top[1]

    start = 0
    for b, n in enumerate(counts):
        for i in range(n):
            t, tok = start + i, ids[start + i]
            choice_close = close(t64[t] / noise[t])
            if d64 is None:
                flip = choice_close
            else:
                a, c = u[t] * d64[t, tok], t64[t, tok]
                flip = c > 0 and abs(a - c) <= 2 * U32 * max(a, c)
                residual = np.maximum(t64[t] - d64[t], 0.0)
                flip = flip or close(residual / noise[t]) or (not residual.any() and choice_close)
            if flip:
                tol[b, i:] = np.inf
                break
        start += n
    return tol
