"""Paged attention, defined in float64 numpy.

Built from one dense primitive, ``dense_attention`` (causal with a position offset, sliding window, soft-cap,
attention sinks, LSE; two named steps: ``attention_logits``, then ``softmax_combine``), plus ``gather_kv`` that
reads one sequence's keys and values out of the paged cache. The paged functions are loops over sequences of
those two; they read only the slots a sequence owns, so poison elsewhere in the cache cannot reach them.

Attention sinks (gpt-oss): one logit per query head, ``sinks[h]``, joins every softmax of that head as a key
with no value: it enlarges the denominator (``sum_t exp(s_t) + exp(sinks[h])``) and the LSE, never the
numerator. It is taken as given: not scaled, not soft-capped, not windowed.
"""
from __future__ import annotations

import numpy as np

from kernels.reference._arrays import f64
from kernels.reference.fp8 import round_to_e4m3
from kernels.validate import (ATTN_DTYPES, check_attention, check_kv_write, check_merge_states, check_split_control,
                               dtype_name, host_ints, is_torch, scalar)


def soft_capped(s: np.ndarray, soft_cap: float | None) -> np.ndarray:
    """``soft_cap * tanh(s / soft_cap)``: bounded by ``soft_cap``, so it cannot overflow."""
    return s if soft_cap is None else soft_cap * np.tanh(s / soft_cap)


def visible(q_positions: np.ndarray, num_keys: int, sliding_window: int | None) -> np.ndarray:
    """``[Lq, Lk]`` bool: query at position p sees key t iff ``t <= p`` and ``t > p - W``."""
    t = np.arange(num_keys)[None, :]
    p = np.asarray(q_positions)[:, None]
    mask = t <= p
    if sliding_window is not None:
        mask &= t > p - sliding_window
    return mask


def dense_attention(q, k, v, q_positions, *, scale: float, sliding_window=None, soft_cap=None, sinks=None):
    """Attention of ``q [Lq, Hq, D]`` over ``k, v [Lk, Hkv, D]`` (key t sits at position t), with optional
    attention sinks ``[Hq]`` (see the module docstring).

    Returns ``out [Lq, Hq, D]`` and the natural-log ``lse [Lq, Hq]``, float64. A query that sees no key gets
    out 0 and lse -inf (with sinks: lse ``sinks[h]``).
    """
    s, mask = attention_logits(q, k, q_positions, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap)
    return softmax_combine(s, mask, v, sinks)


def attention_logits(q, k, q_positions, *, scale: float, sliding_window=None, soft_cap=None):
    """Step 1 of ``dense_attention``: the soft-capped logits ``s [Hq, Lq, Lk]`` and what each query sees,
    ``mask [1, Lq, Lk]``. Query head ``h`` reads KV head ``h // group``."""
    q, k = f64(q), f64(k)
    (lq, hq, d), (lk, hkv) = q.shape, k.shape[:2]
    # the group's query heads share their KV head's matmul ([group * Lq, D] @ [D, Lk], a BLAS batched matmul):
    # K is never copied per query head; float64 sums equal einsum's to ~1e-15
    qg = q.reshape(lq, hkv, hq // hkv, d).transpose(1, 2, 0, 3).reshape(hkv, -1, d)
    s = np.matmul(qg, k.transpose(1, 2, 0)).reshape(hq, lq, lk)
    return soft_capped(scale * s, soft_cap), visible(q_positions, lk, sliding_window)[None]


def softmax_combine(s, mask, v, sinks=None):
    """Step 2: ``out = softmax(s) @ v`` over the visible keys and ``lse = log sum exp(s)``; ``v [Lk, Hkv, D]``.
    ``sinks [Hq]`` (or None): head h's softmax also runs over the logit ``sinks[h]``, which has no value.
    Returns ``out [Lq, Hq, D]``, ``lse [Lq, Hq]``.

    A row with no visible key and no sink (or a ``-inf`` one) gets out 0 and lse -inf; with a finite sink, out
    0 and lse ``sinks[h]``. A NaN sink makes its head's rows NaN; so does a ``+inf`` one (its softmax is
    ``inf / inf``, as ``merge_states`` treats an LSE of ``+inf``).
    """
    v = f64(v)
    (hq, lq, lk), (hkv, d) = s.shape, v.shape[1:]
    sees_a_key = mask.any(axis=-1, keepdims=True)  # [1, Lq, 1]; NaN in a visible key must stay NaN
    s = np.where(mask, s, -np.inf)
    m = np.where(sees_a_key, s.max(axis=-1, initial=-np.inf, keepdims=True), -np.inf)  # [Hq, Lq, 1]
    sink = np.full((hq, 1, 1), -np.inf) if sinks is None else f64(sinks).reshape(hq, 1, 1)
    has_mass = sees_a_key | (sink != -np.inf)  # a NaN sink has mass: it must poison, not empty, the row
    with np.errstate(invalid="ignore"):
        m = np.where(has_mass, np.maximum(m, sink), 0.0)  # np.maximum propagates a NaN logit or sink
        p = np.where(mask, np.exp(s - m), 0.0)
        denom = p.sum(axis=-1, keepdims=True) + np.exp(sink - m)  # the sink's weight (0 for -inf; NaN for +inf)
    # a NaN value poisons the queries that see its key, and only those (0 * NaN would reach the others)
    v_nan = np.repeat(np.isnan(v).any(axis=-1).T, hq // hkv, axis=0)  # [Hq, Lk]
    poisoned = (mask & v_nan[:, None, :]).any(axis=-1)  # [Hq, Lq]
    with np.errstate(invalid="ignore", divide="ignore"):
        v0 = np.where(np.isnan(v), 0.0, v).transpose(1, 0, 2)  # [Hkv, Lk, D]
        pv = np.matmul(p.reshape(hkv, hq // hkv * lq, lk), v0).reshape(hq, lq, d)  # the group shares one matmul
        out = np.where(has_mass, pv / np.where(has_mass, denom, 1.0), 0.0)
        lse = np.where(has_mass[..., 0], m[..., 0] + np.log(denom[..., 0]), -np.inf)
    out = np.where(poisoned[..., None], np.nan, out)
    lse = np.where(poisoned, np.nan, lse)
    return out.transpose(1, 0, 2), lse.T


def gather_kv(k_cache, v_cache, block_row, seq_len: int, *, k_scale=1.0, v_scale=1.0):
    """One sequence's ``[seq_len, Hkv, D]`` keys and values, dequantized (``cache * scale``), float64."""
    block_size = k_cache.shape[1]
    blocks = np.asarray(block_row[: -(-seq_len // block_size)], dtype=np.int64)
    k = f64(k_cache[blocks] if not is_torch(k_cache) else k_cache[_as_index(k_cache, blocks)])
    v = f64(v_cache[blocks] if not is_torch(v_cache) else v_cache[_as_index(v_cache, blocks)])
    k = k.reshape(-1, *k.shape[2:])[:seq_len] * scalar(k_scale, "k_scale")
    v = v.reshape(-1, *v.shape[2:])[:seq_len] * scalar(v_scale, "v_scale")
    return k, v


def _as_index(t, blocks):
    import torch  # deferred: the references are numpy; torch only for a tensor argument

    return torch.as_tensor(blocks, device=t.device)


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None,
                  sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, return_lse=False,
                  batch_invariant=False, sinks=None):
    """Varlen causal attention over the paged cache; query j of sequence i sits at ``seq_len - q_len + j``.
    ``sinks``: float32 ``[num_q_heads]`` attention sinks (the module docstring). ``batch_invariant`` is accepted
    and ignored: each sequence is computed on its own, so it always holds."""
    dims = check_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=scale,
                           sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale,
                           sinks=sinks)
    out, lse = _attend(q, k_cache, v_cache, block_table, dims, sliding_window, soft_cap, k_scale, v_scale, sinks)
    return (out, lse) if return_lse else out


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None, soft_cap=None,
                 k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, return_lse=False,
                 batch_invariant=False, sinks=None):
    """One query per sequence at position ``seq_len - 1``: a prefill whose chunks are one token long.

    ``num_splits``, ``split_size`` and ``batch_invariant`` change how a kernel partitions the work, not the
    math: ignored here (each sequence is computed on its own, its sink counted once).
    """
    check_split_control(num_splits, split_size)
    dims = check_attention(q, k_cache, v_cache, block_table, seq_lens, scale=scale, sliding_window=sliding_window,
                           soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale, sinks=sinks)
    out, lse = _attend(q, k_cache, v_cache, block_table, dims, sliding_window, soft_cap, k_scale, v_scale, sinks)
    return (out, lse) if return_lse else out


def _attend(q, k_cache, v_cache, block_table, dims, sliding_window, soft_cap, k_scale, v_scale, sinks=None):
    """The per-sequence loop both paged functions share: gather the sequence's K/V, attend densely. A sequence
    with no key attends over nothing but its sinks (out 0, lse -inf or ``sinks[h]``)."""
    q64, bt = f64(q), host_ints(block_table, "block_table")
    out = np.zeros(q64.shape, dtype=np.float64)
    lse = np.full(q64.shape[:2], -np.inf, dtype=np.float64)
    empty_kv = np.zeros((0, dims.num_kv_heads, dims.head_dim))
    for i in range(dims.num_seqs):
        lo, hi = dims.query_start_loc[i], dims.query_start_loc[i + 1]
        seq_len = int(dims.seq_lens[i])
        if hi == lo:
            continue  # no query
        k, v = (gather_kv(k_cache, v_cache, bt[i], seq_len, k_scale=k_scale, v_scale=v_scale) if seq_len
                else (empty_kv, empty_kv))
        positions = seq_len - (hi - lo) + np.arange(hi - lo)
        out[lo:hi], lse[lo:hi] = dense_attention(q64[lo:hi], k, v, positions, scale=dims.scale,
                                                 sliding_window=sliding_window, soft_cap=soft_cap, sinks=sinks)
    return out, lse


def merge_states(outs, lses):
    """Combine S partial attention results over disjoint key sets into one.

    ``out = sum_s exp(lse_s - lse) * out_s`` with ``lse = log(sum_s exp(lse_s))``. A partial with lse -inf
    carries no keys: it contributes nothing, even if its out holds NaN. A partial with lse NaN or +inf makes
    the row's out and lse NaN.
    """
    check_merge_states(outs, lses, (*ATTN_DTYPES, "float64"))
    outs, lses = f64(outs), f64(lses)
    poisoned = (np.isnan(lses) | (lses == np.inf)).any(axis=0)
    lses = np.where(poisoned, -np.inf, lses)  # the poisoned rows' values are replaced below
    m = lses.max(axis=0)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(lses - m)  # exp(-inf) = 0 for empty partials
    total = w.sum(axis=0)
    safe_outs = np.where((w > 0)[..., None], outs, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total[..., None] > 0,
                       (w[..., None] * safe_outs).sum(axis=0) / np.where(total > 0, total, 1.0)[..., None], 0.0)
        lse = np.where(total > 0, m + np.log(total), -np.inf)
    return np.where(poisoned[..., None], np.nan, out), np.where(poisoned, np.nan, lse)


def write_kv(key, value, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0):
    """Scatter ``key``/``value [num_tokens, Hkv, D]`` into the paged caches at ``slot_mapping`` (in place).

    ``slot = block_id * block_size + offset``; a negative slot skips its token. An fp8 cache stores
    ``x / scale`` rounded to nearest-even on the e4m3 grid, saturated to +-448. Works on numpy arrays and torch
    tensors; values are computed in float64 and cast once on store.
    """
    check_kv_write(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    slots = host_ints(slot_mapping, "slot_mapping")
    block_size = k_cache.shape[1]
    rows = np.nonzero(slots >= 0)[0]
    blk, off = slots[rows] // block_size, slots[rows] % block_size
    for src, cache, s in ((key, k_cache, k_scale), (value, v_cache, v_scale)):
        vals = f64(src)[rows]
        if dtype_name(cache) == "float8_e4m3fn":
            vals = round_to_e4m3(vals / scalar(s, "k_scale" if cache is k_cache else "v_scale"))
        if is_torch(cache):
            import torch  # deferred: the references are numpy; torch only for a tensor argument

            cache[torch.as_tensor(blk, device=cache.device), torch.as_tensor(off, device=cache.device)] = (
                torch.from_numpy(vals).to(cache.device, cache.dtype))
        else:
            cache[blk, off] = vals.astype(cache.dtype)
    return k_cache, v_cache
