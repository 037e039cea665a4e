"""Batch-invariance and determinism properties, each a function of an implementation.

An implementation is a namespace whose attributes are named like the contract's functions (``kernels.triton``,
``kernels.reference``, any provider's ``kernels.impls.load(name).namespace()``, or a user's module). A property builds its inputs, calls the
implementation the two ways it compares, and returns a ``Verdict``: whether the compared rows are bitwise equal,
how many differ and by how much. ``mode`` picks the keywords of the call: "default" (none), "invariant"
(``batch_invariant=True``) or, for decode, "split_size" (a fixed ``split_size``). An implementation that lacks
the op, or rejects the keyword, gets ``holds=None`` ("not provided"), never a pass.

Every property refuses to be vacuous (``Vacuous`` is raised): the compared outputs must be finite and not all
zero, and the batch around the compared rows must really differ from the call they are compared with (more rows,
neighbours of other lengths, a tile-config switch where the property is about one). Each property's positive
control, a configuration known to break it, lives in ``correctness/test_invariance.py``.

Which properties an op has is its spec's (``OpSpec.invariance``: ``kernels/ops/<op>.py`` names the property
function here, the modes and the promise); every function takes the op it judges as ``op``, so nothing here
names one. ``properties()`` gathers them in the registry's order, then those of the contract's helpers
(``moe_permute``), for ``servekernels check --invariance``, the report's invariance section and the tests.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from kernels.ops import registry, resolve
from kernels.reference.norms import rope_cos_sin_cache
from kernels.testing.moe_inputs import offsets_from_sizes, signed_activations, signed_weights
from kernels.testing.paged import make_paged_batch

MODES = ("default", "invariant", "split_size")
DECODE_SPLIT_SIZE = 128  # the "split_size" mode's partition length


class Vacuous(AssertionError):
    """The comparison could not have failed: trivial outputs, or a batch that changed nothing."""


@dataclass
class Verdict:
    op: str
    prop: str
    mode: str
    holds: bool | None  # None: the implementation does not provide the op (or the mode's keyword)
    rows: int = 0  # rows compared
    rows_differing: int = 0
    max_abs_diff: float = 0.0
    note: str = ""

    @property
    def label(self) -> str:
        if self.holds is None:
            return "not provided"
        if self.holds:
            return "holds"
        return f"differs ({self.rows_differing}/{self.rows} rows, max {self.max_abs_diff:.2e})"


class NotProvided(Exception):
    """The implementation lacks the op or the mode's keyword."""


def mode_kwargs(fn: Callable, mode: str) -> dict:
    """The keywords ``mode`` adds to a call of ``fn``; ``NotProvided`` if ``fn`` does not take them."""
    kw = {"default": {}, "invariant": {"batch_invariant": True}, "split_size": {"split_size": DECODE_SPLIT_SIZE}}[mode]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    missing = [k for k in kw if k not in params]  # named explicitly: a **kwargs pass-through proves nothing
    if missing:
        raise NotProvided(f"{getattr(fn, '__name__', fn)} takes no {missing}")
    return kw


def op_of(impl, name: str) -> Callable:
    fn = getattr(impl, name, None)
    if fn is None:
        raise NotProvided(f"no {name}")
    return fn


# ---------------------------------------------------------------------------------------------- comparing

def guard_nontrivial(name: str, *tensors) -> None:
    for t in tensors:
        t = torch.as_tensor(t).detach().float()
        if t.numel() == 0 or not bool(torch.isfinite(t).all()) or float(t.abs().max()) == 0.0:
            raise Vacuous(f"{name}: a compared output is empty, non-finite or all zero")


def diff_rows(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int, float]:
    """(rows, rows whose bytes differ, max |a - b|) of two same-shaped outputs, row = first axis."""
    a, b = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        raise AssertionError(f"shapes/dtypes differ: {tuple(a.shape)}/{a.dtype} vs {tuple(b.shape)}/{b.dtype}")
    ab = a.contiguous().view(torch.uint8).reshape(a.shape[0], -1) if a.numel() else a.reshape(a.shape[0], -1)
    bb = b.contiguous().view(torch.uint8).reshape(b.shape[0], -1) if b.numel() else b.reshape(b.shape[0], -1)
    differ = (ab != bb).any(dim=1)
    err = (a.double() - b.double()).abs()
    err = torch.where(torch.isnan(err), torch.zeros_like(err), err)
    return int(a.shape[0]), int(differ.sum()), float(err.max()) if err.numel() else 0.0


def verdict(op: str, prop: str, mode: str, pairs, note: str = "") -> Verdict:
    """``pairs``: (actual, expected) outputs to compare bitwise, each already guarded."""
    rows = bad = 0
    worst = 0.0
    for a, e in pairs:
        r, d, m = diff_rows(a, e)
        rows, bad, worst = rows + r, bad + d, max(worst, m)
    return Verdict(op, prop, mode, bad == 0, rows, bad, worst, note)


def _run(op: str, prop: str, mode: str, body: Callable[[], Verdict]) -> Verdict:
    try:
        return body()
    except NotProvided as exc:
        return Verdict(op, prop, mode, None, note=str(exc))


def _as_pair(res):
    """``(out, lse)`` from an attention call that may return out only (vLLM's)."""
    if isinstance(res, tuple):
        return res
    return res, None


def _attn(fn, args, kw, want_lse=True):
    try:
        return _as_pair(fn(*args, return_lse=want_lse, **kw))
    except TypeError:
        return _as_pair(fn(*args, **kw))


# ---------------------------------------------------------------------------------------------- paged batches

def _pick(b, rows: list[int], q_lens: np.ndarray):
    """Sequences ``rows`` of batch ``b`` as one call's (q, block_table, seq_lens, query_start_loc)."""
    qsl = b.query_start_loc.cpu().numpy()
    q = torch.cat([b.q[qsl[i]:qsl[i + 1]] for i in rows]) if rows else b.q[:0]
    lens = q_lens[rows]
    new_qsl = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])).to(torch.int32)
    return q, b.block_table[rows], b.seq_lens[rows], new_qsl


def decode_alone_vs_batch(impl, mode: str = "invariant", *, op: str, seed: int = 0, sizes=(1, 7, 64)) -> Verdict:
    """A needle sequence's decode out and LSE alone vs inside batches of ``sizes`` other sequences, at a random
    position, with random neighbours' lengths (0..200 tokens) and one 1400-token neighbour in every batch: more
    partitions than the needle's, and long enough that the default heuristic picks another partition length
    for a batch of 64 than for the needle alone (192 tokens vs 128, aiming for 3 programs per SM)."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        rng = np.random.default_rng(seed)
        n_max = max(sizes)
        lens = np.concatenate([[333], rng.integers(0, 200, n_max)])
        lens[1] = 1400
        b = make_paged_batch(lens, num_q_heads=5, num_kv_heads=1, head_dim=64, block_size=16, seed=seed)
        alone = _attn(fn, (b.q[:1], b.k_cache, b.v_cache, b.block_table[:1], b.seq_lens[:1]), kw)
        guard_nontrivial("decode alone", *(t for t in alone if t is not None))
        pairs = []
        for n in sizes:
            others = list(1 + rng.permutation(n_max)[:n])
            if 1 not in others:
                others[0] = 1
            at = int(rng.integers(0, n + 1))
            rows = others[:at] + [0] + others[at:]
            out = _attn(fn, (b.q[rows], b.k_cache, b.v_cache, b.block_table[rows], b.seq_lens[rows]), kw)
            if len(rows) < 2 or int(b.seq_lens[rows].max()) <= 333:
                raise Vacuous("decode batch: no neighbour longer than the needle")
            pairs.append((out[0][at:at + 1], alone[0]))
            if out[1] is not None and alone[1] is not None:
                pairs.append((out[1][at:at + 1], alone[1]))
        return verdict(op, "alone vs batch", mode, pairs,
                       f"needle 333 tokens, batches of {list(sizes)} neighbours (0..200 tokens and one of 1400)")
    return _run(op, "alone vs batch", mode, body)


NEEDLE_Q = 3


def _prefill_batch(seed: int):
    """A needle chunk (a 90-token sequence's last 3 queries) and neighbours: decodes, a long chunk, short ones."""
    lens = [90, 1, 200, 37, 150, 12]
    q_lens = np.array([NEEDLE_Q, 1, 120, 1, 3, 12])
    b = make_paged_batch(lens, q_lens, num_q_heads=5, num_kv_heads=1, head_dim=96, block_size=16, seed=seed)
    return b, q_lens


def prefill_alone_vs_batch(impl, mode: str = "invariant", *, op: str, seed: int = 1) -> Verdict:
    """The needle chunk's rows alone vs at each position inside a mixed varlen batch (decodes, longer and
    shorter chunks): the longest chunk changes a batch-chosen tile."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        b, q_lens = _prefill_batch(seed)
        q, bt, sl, qsl = _pick(b, [0], q_lens)
        alone = _attn(fn, (q, b.k_cache, b.v_cache, bt, sl, qsl), kw)
        guard_nontrivial("prefill alone", *(t for t in alone if t is not None))
        pairs = []
        for rows in ([0, 1, 2, 3, 4, 5], [2, 5, 1, 0, 4, 3], [3, 2, 0]):
            q, bt, sl, qsl = _pick(b, rows, q_lens)
            if int(q_lens[rows].max()) < 8 * NEEDLE_Q:
                raise Vacuous("prefill batch: no chunk much longer than the needle's")
            out = _attn(fn, (q, b.k_cache, b.v_cache, bt, sl, qsl), kw)
            lo = int(qsl[rows.index(0)])
            pairs.append((out[0][lo:lo + NEEDLE_Q], alone[0]))
            if out[1] is not None:
                pairs.append((out[1][lo:lo + NEEDLE_Q], alone[1]))
        return verdict(op, "alone vs batch", mode, pairs,
                       f"{NEEDLE_Q}-query chunk of a 90-token sequence among chunks of up to 120")
    return _run(op, "alone vs batch", mode, body)


def prefill_chunked_vs_one_shot(impl, mode: str = "invariant", *, op: str, seed: int = 2, cuts=(64, 128)) -> Verdict:
    """A 150-token prefill in one call vs cut into chunks at ``cuts`` (multiples of 64, the tile and the
    invariant split), each chunk its own call seeing the keys before it."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        n = 150
        b = make_paged_batch([n], [n], num_q_heads=5, num_kv_heads=1, head_dim=96, block_size=16, seed=seed)
        whole = _attn(fn, b.prefill_args(), kw)
        guard_nontrivial("one-shot prefill", *(t for t in whole if t is not None))
        bounds = [0, *cuts, n]
        pairs = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            args = (b.q[lo:hi], b.k_cache, b.v_cache, b.block_table, torch.tensor([hi], dtype=torch.int32),
                    torch.tensor([0, hi - lo], dtype=torch.int32))
            part = _attn(fn, args, kw)
            pairs.append((part[0], whole[0][lo:hi]))
            if part[1] is not None:
                pairs.append((part[1], whole[1][lo:hi]))
        return verdict(op, "chunked vs one shot", mode, pairs, f"150 tokens cut at {list(cuts)}")
    return _run(op, "chunked vs one shot", mode, body)


def prefill_last_row_vs_decode(impl, mode: str = "invariant", *, op: str, seed: int = 3,
                               decode_op: str | None = None) -> Verdict:
    """The last row of a 120-query prefill chunk (prefill op ``op``) vs a decode of the same position: a one-token
    chunk through ``op`` itself (a decode inside a mixed batch), or the decode op ``decode_op`` (its signature:
    one query per sequence, no ``query_start_loc``)."""
    prop = "last prefill row vs decode" + ("" if decode_op is None else f" ({decode_op})")

    def body():
        fn = op_of(impl, op)
        dec = op_of(impl, decode_op or op)
        kw, dkw = mode_kwargs(fn, mode), mode_kwargs(dec, mode)
        n = 130
        b = make_paged_batch([n], [120], num_q_heads=5, num_kv_heads=1, head_dim=96, block_size=16, seed=seed)
        full = _attn(fn, b.prefill_args(), kw)
        guard_nontrivial("prefill", *(t for t in full if t is not None))
        last = b.q[-1:]
        if decode_op is not None:
            one = _attn(dec, (last, b.k_cache, b.v_cache, b.block_table, b.seq_lens), dkw)
        else:
            one = _attn(dec, (last, b.k_cache, b.v_cache, b.block_table, b.seq_lens,
                              torch.tensor([0, 1], dtype=torch.int32)), dkw)
        pairs = [(one[0], full[0][-1:])]
        if one[1] is not None and full[1] is not None:
            pairs.append((one[1], full[1][-1:]))
        return verdict(decode_op or op, prop, mode, pairs, "position 129 of a 130-token sequence")
    return _run(decode_op or op, prop, mode, body)


# ---------------------------------------------------------------------------------------------- grouped GEMMs

GEMM_T = 160  # rows of the batched call: 40 per expert, above the decode tile table's 16 per expert
GEMM_E, GEMM_N, GEMM_K = 4, 48, 128


def _gemm_inputs(seed: int):
    rng = np.random.default_rng(seed)
    sizes = np.array([70, 1, 0, GEMM_T - 71])  # a hot expert, a one-row expert, an empty one
    a = torch.from_numpy(signed_activations(GEMM_T, GEMM_K, rng)).to(torch.float16)
    w = torch.from_numpy(signed_weights(GEMM_E, GEMM_N, GEMM_K, rng)).float()
    return a, w, sizes


def _gemm_call(impl, op: str, kind: str, a, w, offsets, kw):
    """Op ``op`` of ``impl`` on weights of format ``kind`` (``dense``, ``int4``, ``mxfp4``, ``fp8``: an fp8 call
    takes the activations as ``(a_fp8, a_scales)``)."""
    if kind == "dense":
        return op_of(impl, op)(a, w.to(a.dtype), offsets, out_dtype=torch.float32, **kw)
    if kind == "int4":
        return op_of(impl, op)(a, w, offsets, out_dtype=torch.float32, **kw)
    if kind == "mxfp4":  # with a bias: the epilogue is part of what must not depend on the batch
        bias = torch.linspace(-1.0, 1.0, GEMM_E * GEMM_N, dtype=torch.float32).reshape(GEMM_E, GEMM_N)
        return op_of(impl, op)(a, w, offsets, bias=bias, out_dtype=torch.float32, **kw)
    a8, s8 = a
    return op_of(impl, op)(a8, s8, w, offsets, out_dtype=torch.float32, **kw)


def gemm_row_alone_vs_batch(impl, kind: str = "dense", mode: str = "invariant", *, op: str, seed: int = 4,
                            rows=(0, 69, 70, 71, 159)) -> Verdict:
    """Row i of a 160-row grouped GEMM ``op`` on ``kind`` weights (prefill-sized: 40 rows per expert) vs the same
    row as a one-row call (decode-sized): across the tile-table switch."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        a, w, sizes = _gemm_inputs(seed)
        wq, act = w, a
        if kind == "int4":
            wq = op_of(impl, "quantize_int4")(w, group_size=64)
        elif kind == "mxfp4":
            wq = op_of(impl, "quantize_mxfp4")(w)
        elif kind == "fp8":
            wq = op_of(impl, "quantize_fp8")(w, granularity="block", block_size=(128, 128))
            act = op_of(impl, "quantize_fp8_act")(a, 128)
        full = _gemm_call(impl, op, kind, act, wq, offsets_from_sizes(sizes), kw)
        guard_nontrivial(f"{op} batch", full)
        ends = np.cumsum(sizes)
        pairs = []
        for r in rows:
            e = int(np.searchsorted(ends, r, side="right"))
            one = np.zeros(GEMM_E, dtype=np.int64)
            one[e] = 1
            row = act[r:r + 1] if kind != "fp8" else (act[0][r:r + 1], act[1][r:r + 1])
            alone = _gemm_call(impl, op, kind, row, wq, offsets_from_sizes(one), kw)
            pairs.append((alone, full[r:r + 1]))
        return verdict(op, "row alone vs batch", mode, pairs, f"T={GEMM_T} (E={GEMM_E}) vs T=1, rows {list(rows)}")
    return _run(op, "row alone vs batch", mode, body)


def within_group_derangement(sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A row permutation that keeps every row in its group and moves each row of a group with >= 2 rows."""
    perm = np.arange(int(sizes.sum()))
    start = 0
    for s in sizes:
        if s >= 2:
            shift = int(rng.integers(1, s))
            perm[start:start + s] = start + (np.arange(s) + shift) % s  # a rotation: no fixed point
        start += s
    return perm


def gemm_row_order_within_expert(impl, kind: str = "dense", mode: str = "invariant", *, op: str, seed: int = 5
                                 ) -> Verdict:
    """Rows permuted within their experts (a derangement of every expert's rows) give the permuted output."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        a, w, sizes = _gemm_inputs(seed)
        perm = torch.from_numpy(within_group_derangement(sizes, np.random.default_rng(seed)))
        moved = float((perm != torch.arange(len(perm))).float().mean())
        if moved < 0.1:
            raise Vacuous(f"derangement moves only {moved:.0%} of rows")
        wq, act, act_p = w, a, a[perm]
        if kind == "int4":
            wq = op_of(impl, "quantize_int4")(w, group_size=64)
        elif kind == "mxfp4":
            wq = op_of(impl, "quantize_mxfp4")(w)
        elif kind == "fp8":
            wq = op_of(impl, "quantize_fp8")(w, granularity="block", block_size=(128, 128))
            act = op_of(impl, "quantize_fp8_act")(a, 128)
            act_p = (act[0][perm], act[1][perm])
        offs = offsets_from_sizes(sizes)
        y = _gemm_call(impl, op, kind, act, wq, offs, kw)
        yp = _gemm_call(impl, op, kind, act_p, wq, offs, kw)
        guard_nontrivial(f"{op}", y)
        return verdict(op, "row order within expert", mode, [(yp, y[perm])], f"{moved:.0%} of rows moved")
    return _run(op, "row order within expert", mode, body)


# ---------------------------------------------------------------------------------------------- MoE

MOE_T, MOE_H, MOE_I, MOE_E, MOE_K = 96, 128, 64, 4, 2


def _moe_inputs(impl, kind: str, seed: int):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(signed_activations(MOE_T, MOE_H, rng)).float()  # float32 out: no rounding hides a change
    w13 = torch.from_numpy(signed_weights(MOE_E, 2 * MOE_I, MOE_H, rng)).float()
    w2 = torch.from_numpy(signed_weights(MOE_E, MOE_H, MOE_I, rng)).float()
    if kind == "int4":
        w13, w2 = (op_of(impl, "quantize_int4")(w, group_size=32) for w in (w13, w2))
    elif kind == "fp8":
        w13, w2 = (op_of(impl, "quantize_fp8")(w, granularity="block", block_size=(128, 128)) for w in (w13, w2))
    ids = torch.from_numpy(np.stack([rng.choice(MOE_E, MOE_K, replace=False) for _ in range(MOE_T)])).int()
    weights = torch.from_numpy(rng.dirichlet(np.ones(MOE_K), MOE_T)).float()
    return x, w13, w2, ids, weights


def moe_token_alone_vs_batch(impl, kind: str = "dense", mode: str = "invariant", *, op: str, seed: int = 6,
                             tokens=(0, 17, 40, 63, 95)) -> Verdict:
    """A token's ``fused_moe`` output alone (T = 1: decode tiles) vs inside a 96-token batch (48 rows per
    expert: prefill tiles)."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        x, w13, w2, ids, weights = _moe_inputs(impl, kind, seed)
        full = fn(x, w13, w2, ids, weights, **kw)
        guard_nontrivial(f"{op} batch", full)
        pairs = [(fn(x[t:t + 1], w13, w2, ids[t:t + 1], weights[t:t + 1], **kw), full[t:t + 1]) for t in tokens]
        return verdict(op, f"token alone vs batch ({kind})", mode, pairs, f"T={MOE_T} vs T=1")
    return _run(op, f"token alone vs batch ({kind})", mode, body)


def moe_token_order(impl, kind: str = "dense", mode: str = "invariant", *, op: str, seed: int = 7) -> Verdict:
    """The batch's tokens in another order: every token's rows move inside its experts' groups (guard: >= 10 %
    of the (token, slot) rows change their place within their expert); each token's output is unchanged."""
    def body():
        fn = op_of(impl, op)
        kw = mode_kwargs(fn, mode)
        x, w13, w2, ids, weights = _moe_inputs(impl, kind, seed)
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(MOE_T))
        moved = _moved_within_expert(ids, perm)
        if moved < 0.1:
            raise Vacuous(f"the permutation moves only {moved:.0%} of rows within their experts")
        out = fn(x, w13, w2, ids, weights, **kw)
        outp = fn(x[perm], w13, w2, ids[perm], weights[perm], **kw)
        guard_nontrivial(op, out)
        return verdict(op, f"row order within expert ({kind})", mode, [(outp, out[perm])],
                       f"{moved:.0%} of rows moved within their experts")
    return _run(op, f"row order within expert ({kind})", mode, body)


def _moved_within_expert(ids: torch.Tensor, perm: torch.Tensor) -> float:
    """Fraction of (token, slot) rows whose index inside their expert's group changes under the token order
    ``perm`` (the stable sort by expert keeps token order within an expert)."""
    def rank(order_ids):
        flat = order_ids.reshape(-1).numpy()
        r = np.empty(len(flat), dtype=np.int64)
        for e in np.unique(flat):
            where = np.nonzero(flat == e)[0]
            r[where] = np.arange(len(where))
        return r.reshape(order_ids.shape)
    before = rank(ids)[perm.numpy()]
    after = rank(ids[perm])
    return float((before != after).mean())


def route_ties(impl, mode: str = "default", *, op: str, seed: int = 8) -> Verdict:
    """Logits full of exact ties: ids (ties to the lower expert id) and weights the same alone, in a batch,
    and on a second call; the ids equal the tie rule's (lowest ids among equal logits)."""
    def body():
        fn = op_of(impl, op)
        rng = np.random.default_rng(seed)
        logits = torch.from_numpy(rng.integers(-2, 2, (40, 8)).astype(np.float32))  # four values: many ties
        ids, w = fn(logits, 3)
        ids2, w2 = fn(logits, 3)
        guard_nontrivial(f"{op} weights", w)
        pairs = [(ids2, ids), (w2, w)]
        for t in (0, 13, 39):
            i1, w1 = fn(logits[t:t + 1], 3)
            pairs += [(i1, ids[t:t + 1]), (w1, w[t:t + 1])]
        expected = torch.from_numpy(np.argsort(-logits.numpy(), axis=1, kind="stable")[:, :3].astype(np.int32))
        pairs.append((torch.as_tensor(ids).to(torch.int32), expected))
        return verdict(op, "deterministic on ties", mode, pairs, "40 tokens, 8 experts, logits in {-2..1}")
    return _run(op, "deterministic on ties", mode, body)


def moe_permute_ties(impl, mode: str = "default", *, seed: int = 9) -> Verdict:
    """``moe_permute`` twice, and against the stable counting sort: equal experts keep (token, slot) order."""
    def body():
        fn = op_of(impl, "moe_permute")
        rng = np.random.default_rng(seed)
        ids = torch.from_numpy(rng.integers(0, 3, (64, 2)).astype(np.int32))  # 128 pairs over 3 experts
        idx, offs = fn(ids, 5)
        idx2, offs2 = fn(ids, 5)
        stable = torch.from_numpy(np.argsort(ids.reshape(-1).numpy(), kind="stable").astype(np.int32))
        pairs = [(torch.as_tensor(idx2).int(), torch.as_tensor(idx).int()), (torch.as_tensor(idx).int(), stable),
                 (torch.as_tensor(offs2).int(), torch.as_tensor(offs).int())]
        return verdict("moe_permute", "deterministic on ties", mode, pairs, "128 pairs over 3 of 5 experts")
    return _run("moe_permute", "deterministic on ties", mode, body)


# ---------------------------------------------------------------------------------------------- merge, KV write

def _partials(seed: int, s: int = 4, t: int = 24, h: int = 3, d: int = 40):
    rng = np.random.default_rng(seed)
    outs = torch.from_numpy(rng.standard_normal((s, t, h, d))).float()
    lses = torch.from_numpy(rng.standard_normal((s, t, h)) * 3).float()
    lses[1, ::5] = float("-inf")  # empty partials
    return outs, lses


def merge_row_order(impl, mode: str = "default", *, op: str, seed: int = 10) -> Verdict:
    """A merge of the tokens in another order gives the same tokens' results (rows independent)."""
    def body():
        fn = op_of(impl, op)
        outs, lses = _partials(seed)
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(outs.shape[1]))
        o, l = fn(outs, lses)
        op_, lp = fn(outs[:, perm], lses[:, perm])
        guard_nontrivial("merge", o, l)
        return verdict(op, "token order", mode, [(op_, o[perm]), (lp, l[perm])], "24 tokens, 4 partials")
    return _run(op, "token order", mode, body)


def merge_partial_order(impl, mode: str = "default", *, op: str, seed: int = 11) -> Verdict:
    """The partials in another order (the contract: commutative up to rounding; measured here)."""
    def body():
        fn = op_of(impl, op)
        outs, lses = _partials(seed)
        perm = torch.tensor([2, 0, 3, 1])
        o, l = fn(outs, lses)
        op_, lp = fn(outs[perm], lses[perm])
        guard_nontrivial("merge", o, l)
        return verdict(op, "partial order", mode, [(op_, o), (lp, l)], "4 partials reversed-ish")
    return _run(op, "partial order", mode, body)


def write_kv_token_order(impl, mode: str = "default", *, op: str, seed: int = 12, kv_dtype=torch.float16
                         ) -> Verdict:
    """A KV write of the tokens in another order (distinct slots, some skipped) fills the same cache; ``kv_dtype``
    a torch dtype or its name."""
    kv_dtype = getattr(torch, kv_dtype) if isinstance(kv_dtype, str) else kv_dtype
    prop = "token order" + ("" if kv_dtype == torch.float16 else " (fp8 cache)")

    def body():
        fn = op_of(impl, op)
        rng = np.random.default_rng(seed)
        t, h, d, nb, bs = 50, 3, 40, 8, 16
        key = torch.from_numpy(rng.standard_normal((t, h, d))).half()
        value = torch.from_numpy(rng.standard_normal((t, h, d))).half()
        slots = torch.from_numpy(rng.permutation(nb * bs)[:t].astype(np.int64))
        slots[::7] = -1
        perm = torch.from_numpy(rng.permutation(t))
        caches = []
        for order in (torch.arange(t), perm):
            kc = torch.zeros((nb, bs, h, d), dtype=kv_dtype)
            vc = torch.zeros((nb, bs, h, d), dtype=kv_dtype)
            kw = {"k_scale": 0.5, "v_scale": 0.25} if kv_dtype != torch.float16 else {}
            fn(key[order], value[order], kc, vc, slots[order], **kw)
            caches.append((kc.reshape(nb * bs, -1), vc.reshape(nb * bs, -1)))
        guard_nontrivial(f"{op} cache", caches[0][0].float())
        return verdict(op, prop, mode, [(caches[1][0], caches[0][0]), (caches[1][1], caches[0][1])],
                       f"{t} tokens in random order")
    return _run(op, prop, mode, body)


# ---------------------------------------------------------------------------------------------- norms, RoPE

NORM_T, NORM_H = 70, 200  # 70 rows: two programs of the norm kernels' 64 rows each
NORM_FORMS = ("plain", "fused_add", "quant_fp8")  # how a norm op is called (``norm_row_alone_vs_batch``)


def _norm_call(fn, form: str, x, res, w) -> list:
    """One norm call's outputs: [out] (``form`` "fused_add": [out, the updated copy of res] (the residual is
    written in place); "quant_fp8": [out, scales])."""
    if form == "fused_add":
        r = res.clone()
        return [fn(x, r, w, eps=1e-6), r]
    if form == "quant_fp8":
        return list(fn(x, w, eps=1e-6, group_size=64))
    return [fn(x, w, eps=1e-6)]


def norm_row_alone_vs_batch(impl, mode: str = "default", *, op: str, form: str = "plain", seed: int = 13,
                            rows=(0, 64, 69)) -> Verdict:
    """Rows of a 70-row norm ``op`` called as ``form`` (``NORM_FORMS``; two programs of rows) vs each row as a
    one-row call: a row's bits never depend on its neighbours (rows of magnitude 0.1 to 10; a float32 residual
    for the fused add)."""
    def body():
        fn = op_of(impl, op)
        rng = np.random.default_rng(seed)
        scale = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (NORM_T, 1)))
        x = torch.from_numpy(rng.standard_normal((NORM_T, NORM_H)) * scale).to(torch.bfloat16)
        res = torch.from_numpy(rng.standard_normal((NORM_T, NORM_H))).float()
        w = torch.from_numpy(1.0 + 0.3 * rng.standard_normal(NORM_H)).to(torch.bfloat16)
        full = _norm_call(fn, form, x, res, w)
        guard_nontrivial(op, *(t.float() for t in full))
        pairs = []
        for r in rows:
            alone = _norm_call(fn, form, x[r:r + 1], res[r:r + 1], w)
            pairs += [(a, f[r:r + 1]) for a, f in zip(alone, full)]
        return verdict(op, "row alone vs batch", mode, pairs, f"T={NORM_T} vs T=1, rows {list(rows)}")
    return _run(op, "row alone vs batch", mode, body)


def rope_token_alone_vs_batch(impl, mode: str = "default", *, op: str, seed: int = 14, tokens=(0, 19)) -> Verdict:
    """A token's rotated q and k alone vs inside a 20-token batch of scattered positions (NeoX, bfloat16)."""
    def body():
        fn = op_of(impl, op)
        rng = np.random.default_rng(seed)
        q = torch.from_numpy(rng.standard_normal((20, 4, 64))).to(torch.bfloat16)
        k = torch.from_numpy(rng.standard_normal((20, 2, 64))).to(torch.bfloat16)
        cache = torch.from_numpy(rope_cos_sin_cache(4096, 64)).float()
        pos = torch.from_numpy(rng.integers(0, 4096, 20))
        qa, ka = q.clone(), k.clone()
        fn(pos, qa, ka, cache, is_neox=True)
        guard_nontrivial(op, qa, ka)
        pairs = []
        for t in tokens:
            qi, ki = q[t:t + 1].clone(), k[t:t + 1].clone()
            fn(pos[t:t + 1], qi, ki, cache, is_neox=True)
            pairs += [(qi, qa[t:t + 1]), (ki, ka[t:t + 1])]
        return verdict(op, "token alone vs batch", mode, pairs, f"20 tokens vs 1, tokens {list(tokens)}")
    return _run(op, "token alone vs batch", mode, body)


# ---------------------------------------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class Property:
    name: str
    run: Callable  # run(impl, mode) -> Verdict
    modes: tuple  # the modes it is judged in ("default" always: it is what a user gets)
    promised: tuple = ("invariant",)  # the modes in which kernels.triton promises it (a failure there fails)


def _k(fn, **fixed):
    return lambda impl, mode: fn(impl, mode=mode, **fixed)


ORDER = ("default",)  # properties every mode promises: the default is judged

# the contract's helpers are not registry ops (no spec to hold their properties): theirs are listed here
HELPER_PROPERTIES = (
    Property("moe_permute ties", _k(moe_permute_ties), ORDER, ORDER),
)


def properties() -> tuple[Property, ...]:
    """Every op's properties (``OpSpec.invariance``), in the registry's order, then the helpers'."""
    found = []
    for spec in registry().values():
        for p in spec.invariance:
            fn = resolve(p.check)
            found.append(Property(p.name, _k(fn, op=spec.name, **dict(p.args)), p.modes, p.promised))
    return (*found, *HELPER_PROPERTIES)


PROPERTIES = properties()


def judge(impl, properties=PROPERTIES, modes=None, select=None) -> list[tuple[Property, Verdict]]:
    """Every property in each of its modes (``modes`` narrows them; ``select``: names containing one of these)."""
    out = []
    for p in properties:
        if select and not any(s in p.name for s in select):
            continue
        for m in p.modes:
            if modes is None or m in modes:
                v = p.run(impl, m)
                v.prop = p.name
                out.append((p, v))
    return out
