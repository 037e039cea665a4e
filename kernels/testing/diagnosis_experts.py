"""A failing grouped GEMM or fused MoE output in the input's own terms (the ``diagnose`` of
``kernels/ops/grouped_gemm*.py`` and ``kernels/ops/fused_moe.py``), as ``kernels.testing.diagnosis`` does for
attention.

Grouped GEMM (``y [T, N]``): the worst element as (row, expert and the row's index inside it, column); then
- a counterfactual: the reference rerun on weights with one bug planted reproduces the implementation at the
  wrong elements (int4: the symmetric zero point taken as 7 or 9 instead of 8, the two nibbles of a byte
  swapped, the group scales ignored; fp8: the weight scales ignored);
- ``y = reference x c`` at every wrong element (a scale applied twice or not at all);
- the wrong rows fall only in some experts, only at each expert's first or last row (a group offset off by
  one), or the wrong columns only past the last full tile of N (an N tail read unmasked).

Fused MoE (``out [T, H]``): the worst element as (token, its experts and router weights, hidden column); then
the counterfactuals "the router's weights renormalised to sum 1" (the contract applies them as given), "the
router's weights ignored" and "only each token's first expert", and whether the wrong tokens are exactly those
whose weights do not sum to 1, or all route to one expert.

Each clause that holds is returned; a failure none explains reads as its coordinates alone.
"""
from __future__ import annotations

import numpy as np

from kernels import reference as R
from kernels.reference._arrays import f64
from kernels.reference.quant import Fp8Weight, Int4Weight, Mxfp4Weight
from kernels.testing.assertions import element_errors, mismatch, worst_index
from kernels.testing.diagnosis import EXPLAINS_SHARE, EXPLAINS_SLACK

# the N tiles a Triton GEMM commonly uses: "wrong only past the last full tile" is checked at each
N_TILES = (16, 32, 64, 128)


def _explains(a, v, tol, bad) -> bool:
    """``v`` (a counterfactual's output) matches ``a`` at this share of the wrong elements."""
    close = np.abs(np.nan_to_num(a - v, nan=np.inf)) <= EXPLAINS_SLACK * tol
    return bool(close[bad].mean() >= EXPLAINS_SHARE)


def _failing(actual, expected, atol):
    """``(a, e, tol, bad)`` in float64 for a 2-D output with wrong elements; None when there is nothing to
    diagnose (no wrong element, or shapes that differ)."""
    a, e = f64(actual), f64(expected)
    if a.shape != e.shape or a.ndim != 2:
        return None
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), e.shape)
    bad = mismatch(a, e, tol)
    return (a, e, tol, bad) if bad.any() else None


def _constant_factor(a, e, bad) -> str:
    ok = bad & np.isfinite(a) & np.isfinite(e) & (np.abs(e) > 1e-6)
    if ok.sum() < 2 or ok.sum() < 0.9 * bad.sum():
        return ""
    ratio = a[ok] / e[ok]
    r = float(np.median(ratio))
    if np.abs(ratio - r).max() <= 1e-2 * abs(r):
        return f"y = reference x {r:.5g} at every wrong element (a scale applied twice, or not at all)"
    return ""


def _header(a, e, tol, bad, where) -> list[str]:
    parts = [f"worst at {where(worst_index(a, e, tol))}; {int(bad.sum())} of {bad.size} elements wrong"]
    nan_new = np.isnan(a) & ~np.isnan(e)
    if nan_new.any():
        parts.append(f"NaN where the reference is finite ({int(nan_new.sum())} elements, first at "
                     f"{where(tuple(np.argwhere(nan_new)[0]))}): a poisoned weight of an unused expert, or a "
                     "scale past the end of K, was read")
    return parts


# ------------------------------------------------------------------------------------------------ grouped GEMM

def _int4_variants(weight: Int4Weight):
    """``[(what, the weight with that bug)]`` for a symmetric int4 stack."""
    import torch  # deferred: kernels.testing imports without torch where it can (only a failure gets here)

    found = []
    if weight.zeros is None:
        zeros_shape = tuple(weight.scales.shape)
        for z in (7, 9):
            found.append((f"the symmetric zero point is taken as {z}, not 8 (weights off by {8 - z:+d} scale)",
                          Int4Weight(weight.qweight, weight.scales,
                                     torch.full(zeros_shape, z, dtype=torch.uint8), weight.group_size)))
    q = weight.qweight
    swapped = ((q & 0xF) << 4) | (q >> 4)
    found.append(("the two nibbles of each byte are swapped (the even K element is in the low nibble)",
                  Int4Weight(swapped, weight.scales, weight.zeros, weight.group_size)))
    found.append(("the group scales are not applied (scale 1)",
                  Int4Weight(q, torch.ones_like(weight.scales), weight.zeros, weight.group_size)))
    return found


def _gemm_variants(inputs):
    """``[(what, planted inputs' args)]`` for the weight format of this call."""
    import torch  # deferred: as above

    args = inputs.args
    weight = args[-2]
    if isinstance(weight, Int4Weight):
        return [(what, (*args[:-2], w, args[-1])) for what, w in _int4_variants(weight)]
    if isinstance(weight, Fp8Weight):
        unscaled = Fp8Weight(weight.data, torch.ones_like(weight.scales), weight.granularity, weight.block_size)
        return [("the weight scales are not applied (scale 1)", (*args[:-2], unscaled, args[-1]))]
    if isinstance(weight, Mxfp4Weight):
        q = weight.data
        swapped = ((q & 0xF) << 4) | (q >> 4)
        return [("the two codes of each byte are swapped (the even K element is in the low nibble)",
                 (*args[:-2], Mxfp4Weight(swapped, weight.scales), args[-1])),
                ("the E8M0 block scales are not applied (scale 1)",
                 (*args[:-2], Mxfp4Weight(q, torch.full_like(weight.scales, 127)), args[-1]))]
    return []


def grouped_gemm(inputs, output: str, actual, expected, atol) -> str:
    """The diagnosis of a failing grouped GEMM output ``y [T, N]``; "" when nothing is wrong."""
    failing = _failing(actual, expected, atol)
    if failing is None:
        return ""
    a, e, tol, bad = failing
    offs = np.asarray(inputs.args[-1].cpu().numpy() if hasattr(inputs.args[-1], "cpu") else inputs.args[-1],
                      dtype=np.int64)
    expert_of = np.searchsorted(offs, np.arange(a.shape[0]), side="right") - 1

    def where(idx) -> str:
        t, n = int(idx[0]), int(idx[1])
        x = int(expert_of[t])
        return (f"row {t} (expert {x}, its row {t - offs[x]} of {offs[x + 1] - offs[x]}), column {n} of "
                f"{a.shape[1]}")

    parts = _header(a, e, tol, bad, where)
    reference = getattr(R, inputs.op)
    for what, args in _gemm_variants(inputs):
        if _explains(a, f64(reference(*args, **inputs.kwargs)), tol, bad):
            parts.append(f"matches the reference with one bug planted: {what}")
            return "; ".join(parts)
    factor = _constant_factor(a, e, bad)
    if factor:
        parts.append(factor)
    parts += _gemm_structure(bad, offs, expert_of)
    return "; ".join(parts)


def _gemm_structure(bad, offs, expert_of) -> list[str]:
    clauses = []
    rows = bad.any(axis=1)
    experts = sorted({int(x) for x in expert_of[rows]})
    used = [x for x in range(len(offs) - 1) if offs[x + 1] > offs[x]]
    if len(experts) < len(used):
        clauses.append(f"wrong only in experts {experts} of the {len(used)} with rows")
    first = np.zeros(len(rows), bool)
    last = np.zeros(len(rows), bool)
    for x in used:
        first[offs[x]] = True
        last[offs[x + 1] - 1] = True
    for edge, name in ((first, "first"), (last, "last")):
        if rows[edge].all() and not rows[~edge].any():
            clauses.append(f"wrong only at each expert's {name} row: a group offset read one row off")
    n = bad.shape[1]
    cols = bad.any(axis=0)
    for tile in N_TILES:
        full = n - n % tile
        if 0 < full < n and not cols[:full].any():
            clauses.append(f"wrong only in columns >= {full} (N = {n}, past the last full tile of {tile}): the N "
                           "tail")
            break
    return clauses


# ------------------------------------------------------------------------------------------------ fused MoE

def fused_moe(inputs, output: str, actual, expected, atol) -> str:
    """The diagnosis of a failing ``fused_moe`` output ``out [T, H]``; "" when nothing is wrong."""
    failing = _failing(actual, expected, atol)
    if failing is None:
        return ""
    a, e, tol, bad = failing
    x, w13, w2, ids, wts = inputs.args[:5]
    ids_np = np.asarray(ids.cpu().numpy(), dtype=np.int64)
    w64 = f64(wts)

    def where(idx) -> str:
        t, h = int(idx[0]), int(idx[1])
        return (f"token {t} (experts {ids_np[t].tolist()}, weights "
                f"{[round(float(v), 4) for v in w64[t]]}), hidden column {h} of {a.shape[1]}")

    parts = _header(a, e, tol, bad, where)
    variants = [("the router's weights are renormalised to sum 1 (the contract applies them as given)",
                 w64 / np.where(w64.sum(axis=1, keepdims=True) == 0, 1.0, w64.sum(axis=1, keepdims=True))),
                ("the router's weights are ignored (each expert weighted 1)", np.ones_like(w64)),
                ("only each token's first expert is applied", np.where(np.arange(w64.shape[1]) == 0, w64, 0.0))]
    import torch  # deferred: as above

    for what, planted in variants:
        args = (x, w13, w2, ids, torch.from_numpy(planted.astype(np.float32)), *inputs.args[5:])
        if not np.allclose(planted, w64) and _explains(a, f64(R.fused_moe(*args, **inputs.kwargs)), tol, bad):
            parts.append(f"matches the reference with one bug planted: {what}")
            break
    rows = bad.any(axis=1)
    off_one = np.abs(w64.sum(axis=1) - 1.0) > 1e-3
    if rows.any() and off_one.any() and (rows == off_one).all():
        parts.append("wrong exactly at the tokens whose router weights do not sum to 1")
    shared = set(ids_np[np.flatnonzero(rows)[0]].tolist()) if rows.any() else set()
    for t in np.flatnonzero(rows):
        shared &= set(ids_np[t].tolist())
    if shared and not rows.all():
        parts.append(f"every wrong token routes to expert {sorted(shared)[0]}")
    return "; ".join(parts)
