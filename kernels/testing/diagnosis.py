"""A failing comparison in the input's own terms: where the wrong elements are and which planted structure they
follow.

``attention(batch, decode, output, actual, expected, atol)`` (the ``diagnose`` of ``kernels/ops/paged_*.py``)
names the worst element as (sequence, query, position, head, KV head, dim) from the batch's own ``seq_lens``,
``query_start_loc`` and GQA ratio, then tests hypotheses over the set of wrong elements:

- a counterfactual: the reference rerun with one bug planted (the causal mask one key late or early, the window
  ignored or one key off, the soft-cap ignored) reproduces the implementation's output at the wrong elements;
- an LSE off by a constant factor or offset (a base-2 LSE: ratio 1/ln 2 ~ 1.4427; a scale left out);
- NaN where the reference is finite (a poisoned slot no sequence owns was read);
- the wrong rows fall only in sequences with a partial last block, only in empty sequences, only at the queries
  a planted loud key separates (the one whose next key is the loud newest key, those whose window excludes the
  loud key 0), only at some heads of each GQA group or some KV heads.

Each hypothesis that holds is one clause of the returned text; a failure no hypothesis explains reads as its
coordinates alone.
"""
from __future__ import annotations

import math

import numpy as np

from kernels import reference as R
from kernels.reference._arrays import f64
from kernels.testing.assertions import element_errors, mismatch, worst_index

# a counterfactual explains a failure when it matches the implementation at this share of the wrong elements,
# each within this multiple of the element's tolerance
EXPLAINS_SHARE, EXPLAINS_SLACK = 0.9, 2.0
# errors at a planted structure's rows "concentrate" there when their median error / tolerance is this many times
# the other wrong rows'
CONCENTRATED = 10.0


class _Rows:
    """Each query row's sequence, index within its chunk and absolute position, from the batch's metadata."""

    def __init__(self, batch, decode: bool):
        self.seq_lens = batch.seq_lens.cpu().numpy().astype(np.int64)
        n = len(self.seq_lens)
        self.qsl = np.arange(n + 1) if decode else batch.query_start_loc.cpu().numpy().astype(np.int64)
        self.q_lens = np.diff(self.qsl)
        self.seq = np.repeat(np.arange(n), self.q_lens)  # [num_tokens]
        self.j = np.arange(len(self.seq)) - self.qsl[self.seq]
        self.pos = self.seq_lens[self.seq] - self.q_lens[self.seq] + self.j
        self.group = batch.q.shape[1] // batch.k_cache.shape[2]
        self.block_size = batch.k_cache.shape[1]

    def where(self, idx) -> str:
        t, h = int(idx[0]), int(idx[1])
        i = int(self.seq[t])
        dim = f", dim {int(idx[2])}" if len(idx) > 2 else ""
        return (f"seq {i} (seq_len {self.seq_lens[i]}, q_len {self.q_lens[i]}), query {self.j[t]} at position "
                f"{self.pos[t]}, head {h} (kv head {h // self.group}){dim}")


def _variant(batch, decode: bool, shift: int = 0, **overrides):
    """The reference's ``(out, lse)`` with a bug planted: every query ``shift`` positions later (+1: the causal
    mask lets the next key through; -1: the query's own key is hidden), ``overrides`` replacing
    ``sliding_window``/``soft_cap``/``scale``/``sinks``."""
    kw = dict(batch.kwargs, **overrides)
    q = f64(batch.q)
    out, lse = np.zeros(q.shape), np.full(q.shape[:2], -np.inf)
    rows = _Rows(batch, decode)
    bt = batch.block_table.cpu().numpy()
    scale = kw.get("scale") or q.shape[-1] ** -0.5
    sinks = kw.get("sinks")
    for i, n in enumerate(rows.seq_lens):
        lo, hi = rows.qsl[i], rows.qsl[i + 1]
        if hi == lo:
            continue
        if n == 0:  # no key: out 0, the LSE -inf or the sink
            lse[lo:hi] = -np.inf if sinks is None else f64(sinks)[None, :]
            continue
        k, v = R.gather_kv(batch.k_cache, batch.v_cache, bt[i], int(n), k_scale=kw.get("k_scale", 1.0),
                           v_scale=kw.get("v_scale", 1.0))
        out[lo:hi], lse[lo:hi] = R.attention.dense_attention(
            q[lo:hi], k, v, n - (hi - lo) + np.arange(hi - lo) + shift, scale=scale,
            sliding_window=kw.get("sliding_window"), soft_cap=kw.get("soft_cap"), sinks=sinks)
    return {"out": out, "lse": lse}


def _counterfactuals(batch, decode: bool) -> list[tuple[str, dict]]:
    """``[(what the bug is, its overrides)]`` for the features this batch has."""
    kw = batch.kwargs
    found = []
    if not decode:
        found.append(("the causal mask lets one future key through (the query at position p sees key p+1)",
                      dict(shift=1)))
    found.append(("the newest key is dropped (seq_len - 1 keys read)" if decode else
                  "the causal mask hides the query's own key (position p sees keys < p only)", dict(shift=-1)))
    w = kw.get("sliding_window")
    if w:
        found += [(f"the sliding window ({w}) is ignored: keys before it are seen", dict(sliding_window=None)),
                  (f"the window is one key too wide ({w + 1} keys seen, not {w})", dict(sliding_window=w + 1)),
                  (f"the window is one key too narrow ({w - 1} keys seen, not {w})", dict(sliding_window=w - 1))]
    if kw.get("soft_cap"):
        found.append((f"the soft-cap ({kw['soft_cap']}) is not applied", dict(soft_cap=None)))
    if kw.get("sinks") is not None:
        found.append(("the attention sinks are ignored (no sink logit in the softmax denominator)", dict(sinks=None)))
    scale = kw.get("scale") or batch.q.shape[-1] ** -0.5
    found.append((f"the logits are not scaled (scale 1, not {scale:.4g})", dict(scale=1.0)))
    return found


def _matches(a, v, tol, bad) -> bool:
    finite = np.isfinite(a) & np.isfinite(v)
    close = np.abs(np.where(finite, a, 0.0) - np.where(finite, v, 0.0)) <= EXPLAINS_SLACK * tol
    close &= np.isnan(a) == np.isnan(v)
    close &= ~((np.isinf(a) | np.isinf(v)) & (a != v) & ~np.isnan(a) & ~np.isnan(v))
    return bool(close[bad].mean() >= EXPLAINS_SHARE)


# constants an LSE is commonly off by, named for what they mean
def _named_factors(head_dim: int, scale: float) -> list[tuple[float, str]]:
    return [(1 / math.log(2.0), "1/ln 2: the LSE is in base 2 (log2 sum exp2); multiply by ln 2"),
            (math.log(2.0), "ln 2: a base-2 LSE converted twice"),
            (1 / scale, f"1/scale = {1 / scale:.4g}: the LSE is of the unscaled logits"),
            (scale, f"scale = {scale:.4g}: the scale is applied to the LSE twice"),
            (math.sqrt(head_dim), f"sqrt(head_dim) = {math.sqrt(head_dim):.4g}"),
            (1 / math.sqrt(head_dim), f"1/sqrt(head_dim) = {1 / math.sqrt(head_dim):.4g}")]


def _lse_constant(a, e, bad, head_dim: int, scale: float) -> str:
    ok = bad & np.isfinite(a) & np.isfinite(e) & (np.abs(e) > 1e-3)
    if ok.sum() < 2 or ok.sum() < 0.9 * bad.sum():
        return ""
    ratio = a[ok] / e[ok]
    r = float(np.median(ratio))
    if np.abs(ratio - r).max() <= 1e-3 * abs(r):
        for value, meaning in _named_factors(head_dim, scale):
            if abs(r - value) <= 1e-3 * value:
                return f"LSE = reference x {r:.5g} at every wrong element ({meaning})"
        return f"LSE = reference x {r:.5g} at every wrong element (a constant factor)"
    off = a[ok] - e[ok]
    d = float(np.median(off))
    if np.abs(off - d).max() <= 1e-3 * max(abs(d), 1.0):
        return f"LSE = reference {d:+.5g} at every wrong element (a constant offset)"
    return ""


def _structure(rows: _Rows, batch, decode: bool, bad_rows, ratio_rows, loud: bool,
               explained: dict | None) -> list[str]:
    """Clauses for the planted structures the wrong (query, head) rows correlate with; ``ratio_rows``: each
    row's worst error / tolerance; ``explained``: the counterfactual that reproduces the errors, if one does
    (then a structure most of a small batch has, a partial last block or a position past the window, is not
    offered as a second cause unless it is that bug's)."""
    clauses = []
    ratio_t = ratio_rows.max(axis=1)
    has_rows = rows.q_lens > 0
    bad_t = bad_rows.any(axis=1)
    bad_seq = np.zeros(len(rows.seq_lens), bool)
    bad_seq[rows.seq[bad_t]] = True
    partial = rows.seq_lens % rows.block_size != 0
    whole_passing = has_rows & ~partial & (rows.seq_lens > 0) & ~bad_seq
    if explained is None and bad_seq.any() and partial[bad_seq].all() and whole_passing.any():
        clauses.append(f"wrong only in sequences where seq_len % block_size != 0 (block_size {rows.block_size}): "
                       "the partial last block")
    empty = rows.seq_lens == 0
    if bad_seq.any() and empty[bad_seq].all():
        clauses.append("wrong only in empty sequences (seq_len 0: out must be 0, LSE "
                       + ("-inf)" if batch.kwargs.get("sinks") is None else "the sink)"))
    n = rows.seq_lens[rows.seq]
    if loud and not decode:
        # the query just before the loud newest key: only a future key that leaks makes it far worse than the rest
        next_loud = (rows.pos == n - 2) & (n > 1)
        rest = bad_t & ~next_loud
        if next_loud.any() and bad_t[next_loud].all() and (
                not rest.any() or np.median(ratio_t[next_loud]) >= CONCENTRATED * np.median(ratio_t[rest])):
            clauses.append(f"the error concentrates at the queries whose next key is the loud newest key (all "
                           f"{int(next_loud.sum())} wrong, median error/tol {np.median(ratio_t[next_loud]):.3g} vs "
                           f"{np.median(ratio_t[rest]) if rest.any() else 0:.3g} elsewhere): a future key reaches "
                           "queries the causal mask should stop")
    w = batch.kwargs.get("sliding_window")
    if w and loud and (explained is None or "sliding_window" in explained):
        excluded = rows.pos >= w  # key 0 (loud) lies outside these queries' window
        if bad_t.any() and excluded[bad_t].all() and excluded.any():
            clauses.append(f"wrong only at queries whose window excludes the loud key 0 (position >= {w}): the "
                           "window does not hide earlier keys")
    last = rows.pos == n - 1
    if not decode and bad_t.any() and (~last[bad_t]).all() and (last & has_rows[rows.seq]).any():
        clauses.append("every sequence's last query is right: only queries with keys after them are wrong")
    heads = bad_rows.any(axis=0)
    g = rows.group
    if heads.any() and not heads.all():
        in_group = sorted({int(h) % g for h in np.flatnonzero(heads)})
        kv = sorted({int(h) // g for h in np.flatnonzero(heads)})
        if len(in_group) < g:
            clauses.append(f"wrong only at heads {in_group} of each GQA group of {g}")
        elif len(kv) < len(heads) // g:
            clauses.append(f"wrong only at kv heads {kv} of {len(heads) // g}")
    return clauses


def for_batch(batch, decode: bool, output: str):
    """``attention`` bound to one batch and output: the ``diagnose`` of a parity test's ``assert_close``."""
    return lambda actual, expected, atol: attention(batch, decode, output, actual, expected, atol)


def attention(batch, decode: bool, output: str, actual, expected, atol) -> str:
    """The diagnosis of one failing attention output (``out`` [tokens, heads, dim] or ``lse`` [tokens, heads]) of
    ``batch`` (a ``kernels.testing.paged.PagedBatch``; its ``loud`` says it planted loud keys: each sequence's
    newest key, and with a window key 0, aligned with its queries far above the rest); "" when nothing is
    wrong."""
    loud = bool(getattr(batch, "loud", False))
    a, e = f64(actual), f64(expected)
    if a.shape != e.shape:
        return ""
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), e.shape)
    bad = mismatch(a, e, tol)
    if not bad.any():
        return ""
    rows = _Rows(batch, decode)
    bad_rows = bad if bad.ndim == 2 else bad.any(axis=-1)
    ratio = element_errors(a, e) / np.maximum(tol, 1e-300)
    ratio_rows = ratio if ratio.ndim == 2 else ratio.max(axis=-1)
    worst = worst_index(a, e, tol)
    parts = [f"worst at {rows.where(worst)}; {int(bad_rows.sum())} of {bad_rows.size} (query, head) rows wrong, "
             f"in sequences {sorted({int(i) for i in rows.seq[bad_rows.any(axis=1)]})} of {len(rows.seq_lens)}"]
    nan_new = np.isnan(a) & ~np.isnan(e)
    if nan_new.any():
        parts.append(f"NaN where the reference is finite ({int(nan_new.sum())} elements, first at "
                     f"{rows.where(np.argwhere(nan_new)[0])}): a poisoned slot no sequence owns was read")
    if output == "lse":
        scale = batch.kwargs.get("scale") or batch.q.shape[-1] ** -0.5
        const = _lse_constant(a, e, bad, batch.q.shape[-1], scale)
        if const:
            return "; ".join(parts + [const])
    explained = None
    for what, change in _counterfactuals(batch, decode):
        if _matches(a, _variant(batch, decode, **change)[output], tol, bad):
            parts.append(f"matches the reference with one bug planted: {what}")
            explained = change
            break
    return "; ".join(parts + _structure(rows, batch, decode, bad_rows, ratio_rows, loud, explained))
