"""Router inputs with planted structure, and the tolerance ``route`` is judged with.

``router_inputs(shape, seed)`` draws router logits the way real routers look (a per-expert skew, one hot expert)
and plants what a router gets wrong: an exact tie at the k-th expert (the lower id must win), with groups an
exact tie between the last kept group and the best dropped one (the lower group id must win), and a token whose
logits hold a NaN. The selection bias is per expert, on a grid of E / num_groups values (two of them equal);
every group holds a permutation of the same values, so a group can be copied into another as an exact twin.

Fair judging of the ids: experts are chosen on float32 scores (``s + bias``, a group's top-2 sum) where the
reference chooses on float64 ones, so two distinct scores closer than the float32 error could be ordered either
way by a right implementation. The inputs keep every pair of distinct choice scores (and group scores) of a row
at least ``score_margin`` apart (re-drawing an unplanted expert's logit until they are); equal scores are exact
ties (the same logit and the same bias), equal in every precision. Without a bias the gap is relative to the
scores (their float32 error is), with a bias absolute.
"""
from __future__ import annotations

import numpy as np

from kernels.reference import routing as R

U32 = 2.0 ** -24  # float32 unit roundoff
REPAIR_ROUNDS = 400


def score_error(num_experts: int, scoring: str) -> float:
    """A bound on ``|s32 - s|`` for one score ``s <= 1`` computed in float32. softmax: each exponential is off by
    about ``|x| u`` relative (argument rounding; a GPU's ex2.approx adds 2**-22), i.e. ``p |ln p| <= 1/e``
    absolute, the float32 sum over E terms adds ``E u`` relative and the division one more: ``(2E + 16) u``.
    sigmoid: ``exp(-|x|)``, ``1 + z`` and the division, each a few units (approximate GPU versions included):
    ``16 u``."""
    return ((2 * num_experts if scoring == "softmax" else 0) + 16) * U32


def score_margin(num_experts: int, scoring: str) -> float:
    """The gap kept between distinct choice scores of a row (and between distinct group scores): a group score
    is the sum of two choice scores, each ``s + bias`` rounded once more, so two of them can move by at most
    ``2 (2 score_error + 2 u)``; twice that again keeps the order beyond doubt."""
    return 8 * (score_error(num_experts, scoring) + 2 * U32)


def weights_atol(num_experts: int, top_k: int, scoring: str, factor: float) -> float:
    """Per element of ``topk_weights``: the chosen scores' error (``score_error``: each weight <= 1 before the
    factor), the float32 sum of k of them and the division (renormalised: ``(k + 1) u`` relative, a second
    score's error through the sum), the product by ``routed_scaling_factor``; all times ``|factor|``:
    ``|factor| (score_error + (2k + 18) u)``, the sigmoid's 16 units counted twice (numerator and sum)."""
    return abs(float(factor)) * (score_error(num_experts, scoring) + (2 * top_k + 18) * U32)


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    import torch  # deferred: only building inputs needs torch

    from kernels.testing.paged import torch_dtype

    return torch.from_numpy(np.ascontiguousarray(x)).to(torch_dtype(dtype)).double().numpy()


def _scores(logits: np.ndarray, scoring: str) -> np.ndarray:
    return R.softmax(logits) if scoring == "softmax" else R.sigmoid(logits)


def _conflicts(row: np.ndarray, bias, scoring: str, num_groups, margin: float) -> list[tuple[str, int, int]]:
    """Pairs of a row's distinct scores closer than ``margin``: ``("expert", a, b)`` (choice scores) and
    ``("group", g, h)``. With a bias the scores' float32 error is absolute (``s + bias``); without one it is
    relative to the scores (an implementation may rank on float32 ``s`` where the reference ranks on the logits),
    so the gap is measured relative to the larger score."""
    s = _scores(row[None], scoring)[0]
    c = s if bias is None else s + bias
    b = np.zeros_like(c) if bias is None else bias

    def close(x, y):
        return abs(y - x) < margin * (1.0 if bias is not None else max(abs(x), abs(y)))

    out = []
    order = np.argsort(c, kind="stable")
    for i, j in zip(order[:-1], order[1:]):
        if close(c[i], c[j]) and not (row[i] == row[j] and b[i] == b[j]):
            out.append(("expert", int(i), int(j)))
    if num_groups:
        top2 = np.sort(c.reshape(num_groups, -1), axis=-1)[:, -2:]
        gs = top2.sum(axis=-1)
        order = np.argsort(gs, kind="stable")
        for g, h in zip(order[:-1], order[1:]):
            if close(gs[g], gs[h]) and not np.array_equal(top2[g], top2[h]):
                out.append(("group", int(g), int(h)))
    return out


def _repair(logits, t, bias, scoring, num_groups, margin, locked, rng, dtype):
    """Re-draw unlocked experts' logits of row ``t`` until no two distinct scores are closer than ``margin``."""
    size = logits.shape[1] // (num_groups or 1)
    for _ in range(REPAIR_ROUNDS):
        found = _conflicts(logits[t], bias, scoring, num_groups, margin)
        if not found:
            return
        kind, a, b = found[0]
        if kind == "expert":
            pick = [e for e in (b, a) if e not in locked]
        else:  # move a group's best unlocked expert (by choice score: one of its top two, whose sum moves)
            c = _scores(logits[t][None], scoring)[0] + (0.0 if bias is None else bias)
            members = [e for g in (b, a) for e in np.argsort(-c[g * size:(g + 1) * size], kind="stable")
                       + g * size]
            pick = [int(e) for e in members if int(e) not in locked]
        if not pick:
            raise RuntimeError(f"router inputs: row {t} has a near tie among planted experts only ({found[0]})")
        e = pick[0]
        logits[t, e] = _rounded(np.array([logits[t, e] + rng.normal(0.0, 0.5)]), dtype)[0]
    raise RuntimeError(f"router inputs: row {t} still has near ties after {REPAIR_ROUNDS} re-draws")


def router_inputs(shape: dict, seed: int = 0):
    """``(logits float64 [T, E] holding values of shape["dtype"], bias float32-valued [E] or None, kwargs, planted)``
    for a ``route`` shape (``kernels/ops/route.py``); ``planted`` names the rows given a tie or a NaN."""
    t, e, k, dtype = shape["tokens"], shape["experts"], shape["top_k"], shape["dtype"]
    scoring = shape.get("scoring", "softmax")
    groups, kept = shape.get("num_groups"), shape.get("topk_groups")
    kwargs = {key: shape[key] for key in ("renormalize", "scoring", "num_groups", "topk_groups",
                                          "routed_scaling_factor") if key in shape}
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((t, e)) + 0.5 * rng.standard_normal(e)[None, :]  # per-expert skew
    hot = int(rng.integers(e))
    logits[:, hot] += 3.0  # a hot expert: nearly every token's first choice
    logits = _rounded(logits, dtype)
    size = e // (groups or 1)
    bias = None
    if shape.get("correction_bias"):
        values = np.linspace(-0.25, 0.25, size).astype(np.float32).astype(np.float64)
        values[-1] = values[0]  # two experts of a group share a bias: they can tie
        bias = np.concatenate([rng.permutation(values) for _ in range(groups or 1)])  # each group: the same values
    margin = score_margin(e, scoring)
    for row in range(t):
        _repair(logits, row, bias, scoring, groups, margin, set(), rng, dtype)
    planted = {}
    call = dict(kwargs, correction_bias=bias)
    if t >= 2:  # a tie at the k-th expert: its twin (same bias; same group if any) gets its logit
        ids, _ = R.route(logits[:1], k, **call)
        m = int(ids[0, -1])
        kept_groups = {int(i) // size for i in ids[0]}  # the twin's group must be kept too
        twins = [j for j in range(e) if j != m and j // size in kept_groups and j not in ids[0]
                 and (bias is None or bias[j] == bias[m])]
        if twins:
            j = twins[int(rng.integers(len(twins)))]
            logits[0, j] = logits[0, m]
            _repair(logits, 0, bias, scoring, groups, margin, {m, j}, rng, dtype)
            planted[0] = f"experts {min(m, j)} and {max(m, j)} tied at the k-th place"
    if groups and kept < groups and t >= 3:  # the best dropped group becomes an exact twin of the last kept one
        scores = R.group_scores(_scores(logits[1:2], scoring) + (0.0 if bias is None else bias), groups)[0]
        order = np.argsort(-scores, kind="stable")
        g, h = int(order[kept - 1]), int(order[kept])
        gb = slice(g * size, (g + 1) * size)
        src = np.argsort(bias[gb], kind="stable") if bias is not None else np.arange(size)
        dst = np.argsort(bias[h * size:(h + 1) * size], kind="stable") if bias is not None else np.arange(size)
        logits[1, h * size + dst] = logits[1, g * size + src]  # the same bias, the same logit, expert by expert
        planted[1] = f"groups {min(g, h)} and {max(g, h)} tied at the last kept place"
    if t >= 4:
        logits[t - 2, int(rng.integers(e))] = np.nan  # one NaN logit: that token's weights are NaN
        planted[t - 2] = "a NaN logit"
    return logits, bias, kwargs, planted
