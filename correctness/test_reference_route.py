"""The float64 router (``kernels/reference/routing.py``) against its definition written the slow way: every set of
groups and every set of experts enumerated, the one kept being the set whose members each beat every outsider
(a larger score, or an equal one and a lower id). Small E only; plus the properties the contract names."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.reference import routing as R

pytestmark = pytest.mark.host_only("the float64 numpy reference only")


def _beats(score, a, b) -> bool:
    return score[a] > score[b] or (score[a] == score[b] and a < b)


def _best_set(members, size, score):
    """The unique ``size``-subset of ``members`` each of whose elements beats every member left out."""
    found = [set(c) for c in itertools.combinations(members, size)
             if all(_beats(score, a, b) for a in c for b in members if b not in c)]
    assert len(found) == 1, found
    return found[0]


def brute_route(logits, top_k, renormalize, scoring, bias, num_groups, topk_groups, factor):
    ids, weights = [], []
    for row in logits:
        e = len(row)
        if scoring == "softmax":
            ex = [math.exp(x - max(row)) for x in row]
            s = [v / sum(ex) for v in ex]
        else:
            s = [1.0 / (1.0 + math.exp(-x)) for x in row]
        c = [s[i] + (0.0 if bias is None else bias[i]) for i in range(e)]
        eligible = list(range(e))
        if num_groups:
            size = e // num_groups
            group = [max(c[a] + c[b] for a, b in itertools.combinations(range(g * size, (g + 1) * size), 2))
                     for g in range(num_groups)]
            kept = _best_set(list(range(num_groups)), topk_groups, group)
            eligible = [i for i in range(e) if i // size in kept]
        chosen = sorted(_best_set(eligible, top_k, c), key=lambda i: (-c[i], i))
        w = [s[i] for i in chosen]
        if renormalize:
            w = [v / sum(w) for v in w]
        ids.append(chosen)
        weights.append([v * factor for v in w])
    return np.array(ids), np.array(weights)


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 4), size=st.integers(2, 4), tokens=st.integers(1, 3), data=st.data(),
       seed=st.integers(0, 2**31))
def test_grouped_router_equals_brute_force_enumeration(groups, size, tokens, data, seed):
    experts = groups * size
    grouped = data.draw(st.booleans())
    kept = data.draw(st.integers(1, groups)) if grouped else None
    top_k = data.draw(st.integers(1, (kept or groups) * size))
    scoring = data.draw(st.sampled_from(["softmax", "sigmoid"]))
    rng = np.random.default_rng(seed)
    logits = np.where(rng.random((tokens, experts)) < 0.3, 1.0, rng.standard_normal((tokens, experts)) * 2)  # ties
    bias = rng.choice([0.0, 0.1, -0.2, 0.3], size=experts) if data.draw(st.booleans()) else None
    renormalize, factor = data.draw(st.booleans()), data.draw(st.sampled_from([1.0, 2.5]))
    ids, w = R.route(logits, top_k, renormalize=renormalize, scoring=scoring, correction_bias=bias,
                     num_groups=groups if grouped else None, topk_groups=kept, routed_scaling_factor=factor)
    want_ids, want_w = brute_route(logits, top_k, renormalize, scoring, bias, groups if grouped else None, kept,
                                   factor)
    assert (ids == want_ids).all(), (ids.tolist(), want_ids.tolist())
    np.testing.assert_allclose(w, want_w, rtol=1e-12, atol=0)


def test_nan_logits_give_nan_weights_and_valid_ids():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 12))
    logits[1, 5] = np.nan
    logits[2] = np.nan
    bias = rng.standard_normal(12) * 0.1
    for scoring in ("softmax", "sigmoid"):
        ids, w = R.route(logits, 6, scoring=scoring, correction_bias=bias, num_groups=3, topk_groups=2)
        assert np.isnan(w[[1, 2]]).all() and np.isfinite(w[[0, 3]]).all()
        assert ((ids >= 0) & (ids < 12)).all() and all(len(set(r)) == 6 for r in ids.tolist())
        if scoring == "sigmoid":  # only expert 5's score is NaN: it ranks lowest
            assert 5 not in ids[1]


def test_the_bias_only_selects():
    """Weights are the unbiased scores at the chosen ids, whatever the bias."""
    rng = np.random.default_rng(3)
    logits, bias = rng.standard_normal((5, 16)), rng.standard_normal(16)
    ids, w = R.route(logits, 4, renormalize=False, scoring="sigmoid", correction_bias=bias, num_groups=4,
                     topk_groups=2, routed_scaling_factor=2.5)
    np.testing.assert_array_equal(w, 2.5 * np.take_along_axis(R.sigmoid(logits), ids, axis=1))
    plain, _ = R.route(logits, 4, scoring="sigmoid", num_groups=4, topk_groups=2)
    assert (plain != ids).any()  # and it does select


def test_plain_routing_is_unchanged_by_the_new_keywords_at_their_defaults():
    logits = np.random.default_rng(4).standard_normal((7, 10))
    ids, w = R.route(logits, 3)
    ids2, w2 = R.route(logits, 3, scoring="softmax", correction_bias=None, num_groups=None, topk_groups=None,
                       routed_scaling_factor=1.0)
    assert (ids == ids2).all() and (w == w2).all()
    ids3, w3 = R.route(logits, 3, num_groups=1, topk_groups=1)  # one group kept: no limit
    assert (ids == ids3).all() and (w == w3).all()
