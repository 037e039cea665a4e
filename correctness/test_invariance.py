"""Batch invariance and determinism of the Triton kernels (``kernels/testing/invariance.py`` holds the properties).

Each property passes for ``kernels.triton`` in the mode that promises it (``batch_invariant=True``, or always for
the order properties) and has a positive control that shows the comparison can fail: the default mode where a
batch-chosen tile or split really changes the bits, else a deliberately leaky implementation (``Leaky`` nudges
the first row of every call by one ulp, which is exactly how a batch-dependent kernel shows).
"""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import kernels.triton as T
from kernels.testing import invariance as I

GEMM = {"dense": "grouped_gemm", "int4": "grouped_gemm_int4", "fp8": "grouped_gemm_fp8",  # the op of each format
        "mxfp4": "grouped_gemm_mxfp4"}


def _nudge(x):
    if isinstance(x, tuple):
        return tuple(_nudge(t) for t in x)
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.shape[0] == 0:
        return x
    x = x.clone()
    if x.dtype.itemsize == 1:  # float8: the sign bit (one ulp more could reach the NaN code)
        x[0].view(torch.uint8).bitwise_xor_(0x80)
        return x
    bits = {2: torch.int16, 4: torch.int32}[x.dtype.itemsize]
    x[0].view(bits).add_(1)  # one ulp in x's own dtype
    return x


class Leaky:
    """``kernels.triton`` whose attention, GEMM, MoE and merge outputs change in their first row by one ulp (what
    a kernel that depends on its batch does to some row), and whose ``write_kv`` doubles and negates the first
    token's key (a one-ulp change may not survive an fp8 cache)."""

    def __getattr__(self, name):
        fn = getattr(T, name)
        if name == "write_kv":
            return lambda key, value, *a, **kw: fn(key * torch.where(torch.arange(len(key)) == 0, -2.0, 1.0)
                                                   .to(key.dtype)[:, None, None], value, *a, **kw)
        if name.startswith(("quantize", "route", "moe_permute")):
            return fn

        def leaky(*args, batch_invariant=False, **kw):
            return _nudge(fn(*args, batch_invariant=batch_invariant, **kw) if batch_invariant else fn(*args, **kw))
        leaky.__signature__ = inspect.signature(fn)
        return leaky


# the properties of kernels/testing/invariance.py build their inputs on the host (it has no device parameter yet)
ON_HOST = pytest.mark.interpreter("kernels/testing/invariance.py builds its inputs on the host: no device parameter yet")
pytestmark = ON_HOST


def _holds(v: I.Verdict) -> None:
    assert v.holds is True, f"{v.op} {v.prop} [{v.mode}]: {v.label} ({v.note})"


def _breaks(v: I.Verdict) -> None:
    assert v.holds is False and v.rows_differing > 0, f"positive control {v.op} {v.prop} [{v.mode}]: {v.label}"


# -- attention ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_decode_invariant_alone_vs_batches_of_1_to_64():
    # sizes: a batch of 2, 8 and 65
    _holds(I.decode_alone_vs_batch(T, "invariant", sizes=(1, 7, 64), op="paged_decode"))


def test_decode_fixed_split_size_alone_vs_batch():
    _holds(I.decode_alone_vs_batch(T, "split_size", sizes=(3,), seed=5, op="paged_decode"))


@pytest.mark.slow
def test_decode_default_heuristic_changes_with_the_batch():
    """Positive control, and the measurement the report quotes: the split heuristic picks partitions from the
    batch, so the needle's bits move (by a few float16 ulps of the output)."""
    v = I.decode_alone_vs_batch(T, "default", sizes=(64,), op="paged_decode")
    _breaks(v)
    assert v.max_abs_diff < 1e-2  # rounding, not a wrong result


def test_prefill_invariant_alone_vs_mixed_batch():
    _holds(I.prefill_alone_vs_batch(T, "invariant", op="paged_prefill"))


def test_prefill_default_tiles_follow_the_longest_chunk():
    _breaks(I.prefill_alone_vs_batch(T, "default", op="paged_prefill"))


@pytest.mark.parametrize("cuts", [(64, 128), (37, 100)], ids=["split-multiples", "anywhere"])
def test_prefill_chunked_vs_one_shot(cuts):
    """Key tiles sit at absolute multiples of BLOCK_N, so any cut reproduces the one-shot rows in both modes."""
    _holds(I.prefill_chunked_vs_one_shot(T, "invariant", cuts=cuts, op="paged_prefill"))
    _holds(I.prefill_chunked_vs_one_shot(T, "default", cuts=cuts, op="paged_prefill"))
    _breaks(I.prefill_chunked_vs_one_shot(Leaky(), "invariant", cuts=cuts, op="paged_prefill"))


def test_prefill_last_row_vs_one_token_chunk():
    _holds(I.prefill_last_row_vs_decode(T, "invariant", op="paged_prefill"))
    # a 1-token chunk gets 16-row tiles and 64 keys
    _breaks(I.prefill_last_row_vs_decode(T, "default", op="paged_prefill"))


# -- grouped GEMMs and MoE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "int4", "fp8", "mxfp4"])
def test_gemm_row_alone_vs_batch_across_the_tile_switch(kind):
    _holds(I.gemm_row_alone_vs_batch(T, kind, "invariant", op=GEMM[kind]))
    # int4's tile tables both take BLOCK_K = 32 (a row's K steps and group partials then sum in the same order
    # whatever the M and N tiles): the default holds too (see the report); fp8's decode table steps K by 64, its
    # prefill table by 128, so the default breaks there as dense does; mxfp4 steps K by one MX block (32) in both
    if kind in ("int4", "mxfp4"):
        _holds(I.gemm_row_alone_vs_batch(T, kind, "default", op=GEMM[kind]))
        _breaks(I.gemm_row_alone_vs_batch(Leaky(), kind, "invariant", op=GEMM[kind]))
    else:
        _breaks(I.gemm_row_alone_vs_batch(T, kind, "default", op=GEMM[kind]))


@pytest.mark.parametrize("kind", ["dense", "int4", "fp8", "mxfp4"])
def test_gemm_row_order_within_expert(kind):
    _holds(I.gemm_row_order_within_expert(T, kind, "invariant", op=GEMM[kind]))
    _breaks(I.gemm_row_order_within_expert(Leaky(), kind, "invariant", op=GEMM[kind]))


@pytest.mark.host_only("the harness itself: no kernel")
def test_within_group_derangement_moves_every_row_of_a_group():
    sizes = np.array([5, 1, 0, 3])
    perm = I.within_group_derangement(sizes, np.random.default_rng(0))
    assert sorted(perm[:5]) == list(range(5)) and (perm[:5] != np.arange(5)).all()
    assert perm[5] == 5 and sorted(perm[6:]) == [6, 7, 8] and (perm[6:] != np.arange(6, 9)).all()


@pytest.mark.parametrize("kind", ["dense", "int4", "fp8"])
def test_moe_token_alone_vs_batch(kind):
    _holds(I.moe_token_alone_vs_batch(T, kind, "invariant", op="fused_moe"))
    if kind == "dense":
        _breaks(I.moe_token_alone_vs_batch(T, kind, "default", op="fused_moe"))


def test_moe_token_order_moves_rows_within_experts():
    _holds(I.moe_token_order(T, "dense", "invariant", op="fused_moe"))
    _breaks(I.moe_token_order(Leaky(), "dense", "invariant", op="fused_moe"))


def test_route_and_permute_deterministic_on_ties():
    _holds(I.route_ties(T, op="route"))
    _holds(I.moe_permute_ties(T))
    high = SimpleNamespace(route=_ties_to_higher)
    _breaks(I.route_ties(high, op="route"))
    unstable = SimpleNamespace(moe_permute=lambda ids, e: _reversed_within_expert(ids, e))
    _breaks(I.moe_permute_ties(unstable))


def _ties_to_higher(logits, k):
    ids, w = T.route(logits.flip(1), k)  # ties to the lower id of the flipped logits = the higher id
    return (logits.shape[1] - 1 - ids).int(), w


def _reversed_within_expert(ids, num_experts):
    idx, offs = T.moe_permute(ids, num_experts)
    idx = idx.clone()
    for e in range(num_experts):
        lo, hi = int(offs[e]), int(offs[e + 1])
        idx[lo:hi] = idx[lo:hi].flip(0)
    return idx, offs


# -- merge and KV write ------------------------------------------------------------------------------------

def test_merge_rows_independent_and_partial_order_measured():
    _holds(I.merge_row_order(T, op="merge_states"))
    _breaks(I.merge_row_order(Leaky(), op="merge_states"))
    # the contract promises commutativity up to rounding only; the kernel sums partials in their order
    v = I.merge_partial_order(T, op="merge_states")
    assert v.holds is not None and v.max_abs_diff < 1e-5


@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.float8_e4m3fn], ids=["f16", "fp8"])
def test_write_kv_any_token_order(kv_dtype):
    _holds(I.write_kv_token_order(T, kv_dtype=kv_dtype, op="write_kv"))
    _breaks(I.write_kv_token_order(Leaky(), kv_dtype=kv_dtype, op="write_kv"))


# -- norms and RoPE -----------------------------------------------------------------------------------------

NORMS = {"rms_norm": "plain", "fused_add_rms_norm": "fused_add", "rms_norm_quant_fp8": "quant_fp8"}  # op: form


@pytest.mark.parametrize("op", [pytest.param(op, marks=pytest.mark.slow) if "quant" in op else op for op in NORMS])
def test_norm_row_alone_vs_batch(op):
    _holds(I.norm_row_alone_vs_batch(T, op=op, form=NORMS[op]))
    _breaks(I.norm_row_alone_vs_batch(Leaky(), op=op, form=NORMS[op]))


def test_rope_token_alone_vs_batch():
    def leaky(positions, q, k, cache, **kw):  # the first token of every call one ulp off, as a batch-dependent kernel
        T.rotary_embedding(positions, q, k, cache, **kw)
        q[0].view(torch.int16).add_(1)

    _holds(I.rope_token_alone_vs_batch(T, op="rotary_embedding"))
    _breaks(I.rope_token_alone_vs_batch(SimpleNamespace(rotary_embedding=leaky), op="rotary_embedding"))


# -- the harness itself ------------------------------------------------------------------------------------

@pytest.mark.host_only("the harness itself: no kernel")
def test_vacuous_comparisons_are_refused():
    with pytest.raises(I.Vacuous):
        I.guard_nontrivial("zeros", torch.zeros(3, 4))
    with pytest.raises(I.Vacuous):
        I.guard_nontrivial("nan", torch.full((2,), float("nan")))


@pytest.mark.host_only("the harness itself: no kernel")
def test_an_implementation_without_the_op_or_keyword_is_not_provided():
    assert I.decode_alone_vs_batch(SimpleNamespace(), "invariant", op="paged_decode").holds is None
    no_kw = SimpleNamespace(paged_decode=lambda q, k, v, bt, sl: q)
    assert I.decode_alone_vs_batch(no_kw, "invariant", op="paged_decode").label == "not provided"


@pytest.mark.host_only("the property list itself: no kernel")
def test_every_property_comes_from_a_spec_or_a_helper():
    """The properties are the specs' (``OpSpec.invariance``) in the registry's order, then the helpers': an op's
    properties run on that op (each verdict names it), and each name is listed once."""
    from kernels.ops import registry

    names = [p.name for p in I.PROPERTIES]
    assert len(names) == len(set(names))
    declared = [p.name for spec in registry().values() for p in spec.invariance]
    assert names == declared + [p.name for p in I.HELPER_PROPERTIES]
    assert "paged_decode alone vs batch" in declared and "write_kv token order fp8" in declared
    v = next(p for p in I.PROPERTIES if p.name == "merge_states token order").run(SimpleNamespace(), "default")
    assert v.op == "merge_states" and v.holds is None  # the op came from the spec; an impl without it: not provided
