"""Properties of the float64 attention references, checked against independent formulations (pure numpy).

The references are the oracle for every kernel, so they are checked against what attention means rather than
against themselves: paging is only an addressing scheme, chunking a prefill does not change it, a decode is a
one-token prefill, a split key set merges back into the whole, the LSE is a logsumexp, a window holds exactly
W keys, and memory a sequence does not own cannot reach its result. Tolerances are float64 roundings of
sums of at most a few hundred terms: 1e-12 relative to the output's magnitude.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernels.testing.paged import make_paged_batch
from kernels import reference as R
from kernels.reference.fp8 import E4M3_MAX, round_to_e4m3

pytestmark = pytest.mark.host_only("properties of the float64 references (numpy): no kernel")

F64_TOL = 1e-12  # float64 (u = 1.1e-16) sums of <= ~1e3 terms of magnitude <= ~10: far below 1e-12


def close(a, b, tol=F64_TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (np.isneginf(a) == np.isneginf(b)).all() and not np.isnan(a).any() and not np.isnan(b).any()
    fin = np.isfinite(b)
    scale = max(1.0, float(np.abs(b[fin]).max(initial=0.0)))
    err = float(np.abs(a[fin] - b[fin]).max(initial=0.0))
    assert err <= tol * scale, f"max |diff| {err:.3g} > {tol * scale:.3g}"


def random_paged(seq_lens, *, block_size, hkv, d, rng, spare=3):
    """Per-sequence K/V ``[n, hkv, d]`` and a NaN-poisoned paged copy under a random, non-sequential table."""
    need = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(need) + spare
    pool = rng.permutation(num_blocks)
    table = np.full((len(seq_lens), max(need, default=0) + 1), -1, dtype=np.int64)
    k_cache = np.full((num_blocks, block_size, hkv, d), np.nan)
    v_cache = np.full_like(k_cache, np.nan)
    ks, vs, start = [], [], 0
    for i, n in enumerate(seq_lens):
        table[i, :need[i]] = pool[start:start + need[i]]
        start += need[i]
        k, v = rng.standard_normal((n, hkv, d)), rng.standard_normal((n, hkv, d))
        slots = table[i, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
        R.write_kv(k, v, k_cache, v_cache, slots)
        ks.append(k)
        vs.append(v)
    return ks, vs, k_cache, v_cache, table


def naive_attention(q, k, v, positions, *, scale, sliding_window=None, soft_cap=None):
    """Per (query, head) loops with an explicit key list: the textbook definition, and its logsumexp."""
    lq, hq, _ = q.shape
    group = hq // k.shape[1]
    out = np.zeros(q.shape)
    lse = np.full((lq, hq), -np.inf)
    for i in range(lq):
        p = positions[i]
        keys = [t for t in range(k.shape[0]) if t <= p and (sliding_window is None or t > p - sliding_window)]
        for h in range(hq):
            if not keys:
                continue
            s = np.array([scale * q[i, h] @ k[t, h // group] for t in keys])
            if soft_cap is not None:
                s = soft_cap * np.tanh(s / soft_cap)
            m = s.max()
            w = np.exp(s - m)
            lse[i, h] = m + np.log(w.sum())
            out[i, h] = (w[:, None] * v[keys, h // group]).sum(0) / w.sum()
    return out, lse


@pytest.mark.parametrize("sliding_window,soft_cap", [(None, None), (5, None), (None, 3.0), (4, 1.5)])
def test_dense_attention_equals_the_textbook_loop_and_its_lse_is_a_logsumexp(sliding_window, soft_cap):
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((6, 6, 32)), rng.standard_normal((11, 2, 32)), rng.standard_normal((11, 2, 32))
    pos = np.array([0, 3, 5, 7, 9, 10])
    kw = dict(scale=0.3, sliding_window=sliding_window, soft_cap=soft_cap)
    out, lse = R.dense_attention(q, k, v, pos, **kw)
    ref_out, ref_lse = naive_attention(q, k, v, pos, **kw)
    close(out, ref_out)
    close(lse, ref_lse)
    # GQA: query head h uses KV head h // 3 — the same as attending each group against its own head
    for g in range(2):
        sub = R.dense_attention(q[:, 3 * g:3 * g + 3], k[:, g:g + 1], v[:, g:g + 1], pos, **kw)
        close(out[:, 3 * g:3 * g + 3], sub[0])


@pytest.mark.parametrize("block_size", [1, 5, 16])
def test_paged_equals_dense_for_any_table(block_size):
    """A random table over a poisoned pool and a contiguous one-token-per-block layout both equal the dense
    attention on the sequence's own K/V."""
    rng = np.random.default_rng(block_size)
    seq_lens, q_lens, hq, hkv, d = [0, 1, 9, 23, 40], [0, 1, 4, 23, 1], 4, 2, 32
    ks, vs, kc, vc, table = random_paged(seq_lens, block_size=block_size, hkv=hkv, d=d, rng=rng)
    q = rng.standard_normal((sum(q_lens), hq, d))
    qsl = np.concatenate([[0], np.cumsum(q_lens)])
    out, lse = R.paged_prefill(q, kc, vc, table, np.array(seq_lens), qsl, return_lse=True)
    # contiguous layout: block_size 1, sequence i's tokens in consecutive blocks
    flat_k = np.concatenate([k for k in ks]).reshape(-1, 1, hkv, d)
    flat_v = np.concatenate([v for v in vs]).reshape(-1, 1, hkv, d)
    starts = np.concatenate([[0], np.cumsum(seq_lens)])
    flat_table = np.zeros((len(seq_lens), max(seq_lens)), dtype=np.int64)
    for i, n in enumerate(seq_lens):
        flat_table[i, :n] = starts[i] + np.arange(n)
    out_c, lse_c = R.paged_prefill(q, flat_k, flat_v, flat_table, np.array(seq_lens), qsl, return_lse=True)
    close(out, out_c)
    close(lse, lse_c)
    for i, (n, ql) in enumerate(zip(seq_lens, q_lens)):
        if ql == 0:
            continue
        dense = R.dense_attention(q[qsl[i]:qsl[i + 1]], ks[i], vs[i], n - ql + np.arange(ql), scale=d ** -0.5)
        close(out[qsl[i]:qsl[i + 1]], dense[0])
        close(lse[qsl[i]:qsl[i + 1]], dense[1])
    assert not np.isnan(out).any() and not np.isnan(lse).any()


def test_chunked_prefill_equals_one_shot():
    rng = np.random.default_rng(1)
    n, hq, hkv, d = 30, 4, 1, 32
    _, _, kc, vc, table = random_paged([n], block_size=7, hkv=hkv, d=d, rng=rng)
    q = rng.standard_normal((n, hq, d))
    whole = R.paged_prefill(q, kc, vc, table, np.array([n]), np.array([0, n]), return_lse=True, sliding_window=9)
    done = 0
    for chunk in (1, 12, 5, 12):  # the cache already holds all 30 tokens: seq_lens says how many are "written"
        part = R.paged_prefill(q[done:done + chunk], kc, vc, table, np.array([done + chunk]), np.array([0, chunk]),
                               return_lse=True, sliding_window=9)
        close(part[0], whole[0][done:done + chunk])
        close(part[1], whole[1][done:done + chunk])
        done += chunk
    assert done == n


def test_decode_equals_a_one_token_prefill():
    b = make_paged_batch([0, 1, 17, 50], num_q_heads=6, num_kv_heads=2, head_dim=32, block_size=8,
                         dtype="float32", sliding_window=20, soft_cap=4.0)
    dec = R.paged_decode(*b.decode_args(), **b.kwargs, return_lse=True)
    # a prefill cannot hold a query for an empty sequence: q_len 0 there, 1 elsewhere
    q_lens = (b.seq_lens > 0).int()
    qsl = torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(q_lens, 0).int()])
    pre = R.paged_prefill(b.q[1:], b.k_cache, b.v_cache, b.block_table, b.seq_lens, qsl, **b.kwargs,
                          return_lse=True)
    np.testing.assert_array_equal(dec[0][1:], pre[0])
    np.testing.assert_array_equal(dec[1][1:], pre[1])
    assert (dec[0][0] == 0).all() and np.isneginf(dec[1][0]).all()


def _chunks(rng, num_keys, parts):
    q, k, v = rng.standard_normal((3, 4, 32)), rng.standard_normal((num_keys, 2, 32)), rng.standard_normal((num_keys, 2, 32))
    pos = np.full(3, num_keys - 1)
    cuts = [0, *np.sort(rng.choice(np.arange(1, num_keys), parts - 1, replace=False)), num_keys]
    states = [R.dense_attention(q, k[a:b], v[a:b], pos - a, scale=0.2) for a, b in zip(cuts, cuts[1:])]
    return states, R.dense_attention(q, k, v, pos, scale=0.2)


@pytest.mark.parametrize("parts", [2, 3, 6])
def test_merge_of_a_split_equals_the_whole(parts):
    states, (whole_out, whole_lse) = _chunks(np.random.default_rng(parts), 25, parts)
    out, lse = R.merge_states(np.stack([s[0] for s in states]), np.stack([s[1] for s in states]))
    close(out, whole_out)
    close(lse, whole_lse)


def test_merge_is_commutative_and_associative():
    states, _ = _chunks(np.random.default_rng(7), 30, 4)
    outs, lses = np.stack([s[0] for s in states]), np.stack([s[1] for s in states])
    flat = R.merge_states(outs, lses)
    perm = [2, 0, 3, 1]
    close(R.merge_states(outs[perm], lses[perm])[0], flat[0])
    ab, cd = R.merge_states(outs[:2], lses[:2]), R.merge_states(outs[2:], lses[2:])
    nested = R.merge_states(np.stack([ab[0], cd[0]]), np.stack([ab[1], cd[1]]))
    a_bcd = R.merge_states(np.stack([outs[0], R.merge_states(outs[1:], lses[1:])[0]]),
                           np.stack([lses[0], R.merge_states(outs[1:], lses[1:])[1]]))
    for out, lse in (nested, a_bcd):
        close(out, flat[0])
        close(lse, flat[1])


def test_merge_ignores_empty_partials_even_with_nan_outs():
    states, (whole_out, whole_lse) = _chunks(np.random.default_rng(8), 20, 2)
    outs = np.stack([states[0][0], np.full_like(whole_out, np.nan), states[1][0]])
    lses = np.stack([states[0][1], np.full_like(whole_lse, -np.inf), states[1][1]])
    out, lse = R.merge_states(outs, lses)
    close(out, whole_out)
    close(lse, whole_lse)
    empty = R.merge_states(np.full((2, 1, 1, 8), np.nan), np.full((2, 1, 1), -np.inf))
    assert (empty[0] == 0).all() and np.isneginf(empty[1]).all()


def test_soft_cap_bounds_every_logit():
    """|capped logit| <= cap (tanh saturates to exactly 1 in float64): with n visible keys the LSE lies in
    [log n - cap, log n + cap], however large the raw logits (here up to ~1e4) get."""
    rng = np.random.default_rng(9)
    q, k, v = rng.standard_normal((5, 2, 32)) * 30, rng.standard_normal((12, 2, 32)) * 30, rng.standard_normal((12, 2, 32))
    pos = np.array([0, 2, 5, 8, 11])
    cap = 2.5
    out, lse = R.dense_attention(q, k, v, pos, scale=1.0, soft_cap=cap)
    n = np.minimum(pos + 1, 12)[:, None]
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    slack = F64_TOL * cap
    assert (lse <= np.log(n) + cap + slack).all() and (lse >= np.log(n) - cap - slack).all()
    assert np.abs(lse - np.log(n)).max() > 0.9 * cap  # the bound is reached: logits far beyond the cap
    raw = R.dense_attention(q, k, v, pos, scale=1.0)[1]
    assert raw.max() > 1000  # the cap is doing the bounding


@pytest.mark.parametrize("window", [1, 3, 8, 100])
def test_sliding_window_is_w_keys_including_itself(window):
    rng = np.random.default_rng(window)
    q, k, v = rng.standard_normal((9, 2, 32)), rng.standard_normal((20, 1, 32)), rng.standard_normal((20, 1, 32))
    pos = np.array([0, 1, 2, 5, 7, 8, 12, 18, 19])
    out, lse = R.dense_attention(q, k, v, pos, scale=0.5, sliding_window=window)
    for i, p in enumerate(pos):
        lo = max(0, p - window + 1)  # keys lo..p: min(W, p + 1) of them, p itself included
        o, s = R.dense_attention(q[i:i + 1], k[lo:p + 1], v[lo:p + 1], np.array([p - lo]), scale=0.5)
        close(out[i:i + 1], o)
        close(lse[i:i + 1], s)
    if window == 1:  # only itself: the output is its own value row
        close(out, np.repeat(v[pos], 2, axis=1))


def test_write_kv_fp8_matches_torch_cast_inside_range_and_saturates_outside():
    rng = np.random.default_rng(10)
    n, hkv, d, scale = 40, 2, 32, 0.25  # a power-of-two scale: x / scale is exact
    # float32-representable values (torch casts through float32) across normal, subnormal and tie cases
    vals = (rng.standard_normal((n, hkv, d)) * np.exp2(rng.integers(-12, 7, (n, hkv, d)))).astype(np.float32)
    vals[0, 0, :8] = np.array([2 ** -10, 3 * 2 ** -11, 1.0625, 1.1875, 104.0, 112.0, -0.0, 0.0], np.float32) * scale
    vals = np.clip(vals, -E4M3_MAX * scale, E4M3_MAX * scale).astype(np.float64)
    big = np.array([460.0, 500.0, 1e6, -449.0, -3e4, 448.5, 1e30, -1e30]) * scale
    vals[1, 1, :8] = big
    key = torch.from_numpy(vals.astype(np.float32))  # every value is float32-exact
    kc = torch.zeros(8, 5, hkv, d, dtype=torch.float8_e4m3fn)
    vc = torch.zeros_like(kc)
    slots = torch.from_numpy(np.r_[rng.permutation(40)[:n - 1], -1])  # the last token skipped
    R.write_kv(key, key, kc, vc, slots, k_scale=scale, v_scale=scale)
    stored = kc.reshape(-1, hkv, d)[slots[:-1]].double().numpy()
    expect = torch.from_numpy(vals[:-1] / scale).to(torch.float8_e4m3fn).double().numpy()
    inside = np.abs(vals[:-1] / scale) <= E4M3_MAX
    np.testing.assert_array_equal(stored[inside], expect[inside])
    np.testing.assert_array_equal(stored[1, 1, :8], np.sign(big) * E4M3_MAX)  # saturated, never NaN
    np.testing.assert_array_equal(stored, round_to_e4m3(vals[:-1] / scale))
    assert (kc.reshape(-1, hkv, d).double()[~torch.isin(torch.arange(40), slots)] == 0).all()  # untouched


@pytest.mark.parametrize("decode", [False, True])
def test_nan_in_unused_memory_does_not_change_the_reference(decode):
    kw = dict(num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=6, dtype="float32", seed=11)
    q_lens = None if decode else [0, 1, 3, 20]
    clean = make_paged_batch([0, 1, 7, 20], q_lens, poison=False, **kw)
    dirty = make_paged_batch([0, 1, 7, 20], q_lens, poison=True, **kw)
    assert torch.isnan(dirty.k_cache).any() and torch.isnan(dirty.v_cache).any()
    if decode:
        a, b = (R.paged_decode(*x.decode_args(), return_lse=True) for x in (clean, dirty))
    else:
        a, b = (R.paged_prefill(*x.prefill_args(), return_lse=True) for x in (clean, dirty))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.isnan(a[0]).any() and np.abs(a[0]).max() > 0.1


# ------------------------------------------------------------------------------------- attention sinks (gpt-oss)

def naive_attention_with_sink(q, k, v, positions, sinks, **kw):
    """The textbook loop with the sink as one more logit of no value: ``exp(sink)`` joins the denominator only."""
    lq, hq, _ = q.shape
    group = hq // k.shape[1]
    out = np.zeros(q.shape)
    lse = np.full((lq, hq), -np.inf)
    for i in range(lq):
        p = positions[i]
        w_ = kw.get("sliding_window")
        keys = [t for t in range(k.shape[0]) if t <= p and (w_ is None or t > p - w_)]
        for h in range(hq):
            s = np.array([kw["scale"] * q[i, h] @ k[t, h // group] for t in keys])
            if kw.get("soft_cap") is not None:
                s = kw["soft_cap"] * np.tanh(s / kw["soft_cap"])
            m = max(s.max(initial=-np.inf), sinks[h])
            w = np.exp(s - m)
            denom = w.sum() + np.exp(sinks[h] - m)
            lse[i, h] = m + np.log(denom)
            out[i, h] = (w[:, None] * v[keys, h // group]).sum(0) / denom if keys else 0.0
    return out, lse


@pytest.mark.parametrize("sliding_window,soft_cap", [(None, None), (4, 1.5)])
def test_sinks_join_the_denominator_unscaled_uncapped_unwindowed(sliding_window, soft_cap):
    """Against the textbook loop (scale 0.3, a window, a soft-cap 1.5 below some sinks: the sink is none of
    them), and the identity a sink must satisfy: ``lse = logaddexp(lse_without, sink)``, ``out = out_without *
    exp(lse_without - lse)`` (it only enlarges the denominator)."""
    rng = np.random.default_rng(12)
    q, k, v = rng.standard_normal((6, 6, 32)), rng.standard_normal((11, 2, 32)), rng.standard_normal((11, 2, 32))
    pos = np.array([0, 3, 5, 7, 9, 10])
    sinks = np.array([-3.0, 0.0, 1.0, 2.5, 4.0, 7.0], dtype=np.float32)  # 4 and 7 past the soft-cap
    kw = dict(scale=0.3, sliding_window=sliding_window, soft_cap=soft_cap)
    out, lse = R.dense_attention(q, k, v, pos, **kw, sinks=sinks)
    ref_out, ref_lse = naive_attention_with_sink(q, k, v, pos, sinks.astype(np.float64), **kw)
    close(out, ref_out)
    close(lse, ref_lse)
    plain_out, plain_lse = R.dense_attention(q, k, v, pos, **kw)
    close(lse, np.logaddexp(plain_lse, sinks[None, :]))
    close(out, plain_out * np.exp(plain_lse - lse)[..., None])
    assert (np.abs(out - plain_out) > 0.01).any()  # the sinks matter here


def _both(seq_lens, q_lens, **kw):
    """The reference functions with a prefill batch and a decode batch over the same lengths."""
    kw = dict(num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=8, dtype="float32", **kw)
    pre, dec = make_paged_batch(seq_lens, q_lens, **kw), make_paged_batch(seq_lens, **kw)
    return ((R.paged_prefill, pre.prefill_args(), pre.kwargs), (R.paged_decode, dec.decode_args(), dec.kwargs))


def test_a_minus_inf_sink_is_no_sink():
    none = np.full(4, -np.inf, dtype=np.float32)
    for fn, args, kwargs in _both([0, 1, 17, 50], [0, 1, 5, 50], sliding_window=20, soft_cap=4.0):
        b = SimpleNamespace(kwargs=kwargs)
        with_sinks = fn(*args, **b.kwargs, sinks=none, return_lse=True)
        without = fn(*args, **b.kwargs, return_lse=True)
        np.testing.assert_array_equal(with_sinks[0], without[0])
        np.testing.assert_array_equal(with_sinks[1], without[1])


@pytest.mark.parametrize("owner", [0, 1])
def test_a_split_with_the_sink_in_one_partial_merges_to_the_whole(owner):
    """Keys cut in two (at key 9, and past the window start): the partial named ``owner`` carries the sink, the
    other none; ``merge_states`` of the two equals the unsplit attention with the sink. Counting it in both
    partials (a split-KV kernel that loads the sink in every partition) does not."""
    rng = np.random.default_rng(13)
    q, k, v = rng.standard_normal((4, 4, 32)), rng.standard_normal((20, 2, 32)), rng.standard_normal((20, 2, 32))
    pos = np.array([3, 10, 15, 19])  # query 0 sees no key of the second part
    sinks = np.array([0.5, 1.5, 2.0, -1.0], dtype=np.float32)
    s, mask = R.attention.attention_logits(q, k, pos, scale=0.25, sliding_window=12)
    first = np.arange(20)[None, None, :] < 9
    sink_of = [sinks if owner == i else None for i in (0, 1)]
    parts = [R.attention.softmax_combine(s, mask & first, v, sink_of[0]),
             R.attention.softmax_combine(s, mask & ~first, v, sink_of[1])]
    out, lse = R.merge_states(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))
    whole = R.dense_attention(q, k, v, pos, scale=0.25, sliding_window=12, sinks=sinks)
    close(out, whole[0])
    close(lse, whole[1])
    twice = [R.attention.softmax_combine(s, mask & m, v, sinks) for m in (first, ~first)]
    lse2 = R.merge_states(np.stack([p[0] for p in twice]), np.stack([p[1] for p in twice]))[1]
    assert (lse2 - whole[1]).min() > 1e-3  # counted twice: every row's LSE moves up


def test_no_visible_key_gives_out_0_and_the_sink_as_lse():
    b = make_paged_batch([0, 5, 0], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=8, dtype="float32")
    sinks = np.array([0.25, -2.0, 3.0, -np.inf], dtype=np.float32)
    out, lse = R.paged_decode(*b.decode_args(), sinks=sinks, return_lse=True)
    for i in (0, 2):
        assert (out[i] == 0).all()
        np.testing.assert_array_equal(lse[i], sinks.astype(np.float64))  # -inf for the -inf sink
    assert np.isfinite(out[1]).all() and np.isfinite(lse[1]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_or_plus_inf_sink_poisons_its_head_only(bad):
    """Every row of the head (an empty sequence's too) is NaN in out and LSE; the other heads are as without."""
    sinks = np.array([0.5, bad, -1.0, 2.0], dtype=np.float32)
    for fn, args, _ in _both([0, 5, 30], [0, 2, 30]):
        out, lse = fn(*args, sinks=sinks, return_lse=True)
        assert np.isnan(out[:, 1]).all() and np.isnan(lse[:, 1]).all()
        fine = np.delete(np.arange(4), 1)
        assert not np.isnan(out[:, fine]).any() and not np.isnan(lse[:, fine]).any()
        clean = sinks.copy()
        clean[1] = 0.0
        ref = fn(*args, sinks=clean, return_lse=True)
        np.testing.assert_array_equal(out[:, fine], ref[0][:, fine])
        np.testing.assert_array_equal(lse[:, fine], ref[1][:, fine])
