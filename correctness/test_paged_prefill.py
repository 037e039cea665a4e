"""Triton paged_prefill against the float64 reference, on poisoned ragged batches.

Every batch comes from ``make_paged_batch``: NaN in every slot and block a sequence does not own, garbage past
each block-table row, and (``loud_future``) a last key so loud that any query wrongly seeing it is dominated by
it (with a sliding window, also a loud first key that windowed-out queries must not hear). Tolerances are the
derived ones: ``attention_out_atol`` scaled by the batch's |V| max, ``lse_atol`` by its logit bound.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.testing.assertions import assert_close
from kernels.testing.diagnosis import for_batch
from kernels.testing.paged import make_paged_batch
from correctness.sm90 import compile_sm90, run_compile_child
from kernels.testing.tolerances import attention_out_atol, lse_atol
from kernels import reference as R
from correctness.impl import T
from kernels.runtime import interpreter_enabled

# A mixed batch: empty sequence, one-token prefill, full prefill, chunk starting mid-sequence, an empty chunk of
# a non-empty sequence, a decode token, and a long chunk that spans several query and key tiles.
MIXED_SEQ = [0, 1, 37, 100, 64, 17, 150]
MIXED_Q = [0, 1, 37, 29, 0, 1, 90]

CASES = {
    # name: (make_paged_batch kwargs)
    "fp16-gqa4-d128-bs16": dict(num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16, dtype="float16"),
    "bf16-gqa5-d80-bs7": dict(num_q_heads=10, num_kv_heads=2, head_dim=80, block_size=7, dtype="bfloat16"),
    "fp32-mha-d64-bs1": dict(num_q_heads=3, num_kv_heads=3, head_dim=64, block_size=1, dtype="float32"),
    "fp16-gqa6-d192-bs16-interleaved": dict(num_q_heads=6, num_kv_heads=1, head_dim=192, block_size=16,
                                            dtype="float16", layout="interleaved"),
    "fp16-gqa3-d256-bs12-stacked": dict(num_q_heads=6, num_kv_heads=2, head_dim=256, block_size=12,
                                        dtype="float16", layout="stacked"),
    "bf16-fp8cache-gqa4-d128-bs16": dict(num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16,
                                         dtype="bfloat16", kv_dtype="float8_e4m3fn", k_scale=0.37, v_scale=1.9),
    "fp16-fp8cache-gqa2-d96-bs5-stacked": dict(num_q_heads=4, num_kv_heads=2, head_dim=96, block_size=5,
                                               dtype="float16", kv_dtype="float8_e4m3fn", k_scale=2.5,
                                               v_scale=0.05, layout="stacked"),
    "fp16-window13-d64-bs5": dict(num_q_heads=4, num_kv_heads=1, head_dim=64, block_size=5, dtype="float16",
                                  sliding_window=13),
    "fp32-window1-d32-bs3": dict(num_q_heads=2, num_kv_heads=2, head_dim=32, block_size=3, dtype="float32",
                                 sliding_window=1),
    "bf16-window32-softcap30-gqa2-d128": dict(num_q_heads=4, num_kv_heads=2, head_dim=128, block_size=16,
                                              dtype="bfloat16", sliding_window=32, soft_cap=30.0),
    "fp32-softcap10-gqa8-d64-bs16": dict(num_q_heads=8, num_kv_heads=1, head_dim=64, block_size=16,
                                         dtype="float32", soft_cap=10.0),
    # attention sinks near the LSE (gpt-oss): with a window (the sink is not windowed), through an fp8 cache
    "bf16-gqa8-d64-bs16-window20-sinks": dict(num_q_heads=16, num_kv_heads=2, head_dim=64, block_size=16,
                                              dtype="bfloat16", sliding_window=20, sink_logit=4.0),
    "fp16-fp8cache-gqa2-d64-bs16-sinks": dict(num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
                                              dtype="float16", kv_dtype="float8_e4m3fn", k_scale=0.37, v_scale=1.9,
                                              sink_logit=5.0),
}


def check_prefill(batch, *, q_dtype=None, **launch):
    """Kernel vs reference on ``batch``: out and LSE within the derived tolerances (``launch``: extra keywords
    for the kernel only, e.g. our ``num_splits``)."""
    dtype = q_dtype or batch.q.dtype
    out, lse = T.paged_prefill(*batch.prefill_args(), return_lse=True, **batch.kwargs, **launch)
    ref_out, ref_lse = R.paged_prefill(*batch.prefill_args(), return_lse=True, **batch.kwargs)
    assert out.dtype == batch.q.dtype and out.shape == batch.q.shape
    assert lse.dtype == torch.float32 and lse.shape == batch.q.shape[:2]
    magnitude, logit_max = batch.attention_scales()  # one pass for both tolerances
    # per element: sum_i p_i |v_i| and the query's largest visible |logit| (see kernels/testing/tolerances.py)
    assert_close(out, ref_out, atol=attention_out_atol(dtype, magnitude), name="out",
                 diagnose=for_batch(batch, False, "out"))
    assert_close(lse, ref_lse, atol=lse_atol(dtype, logit_max), name="lse", diagnose=for_batch(batch, False, "lse"))
    return out, lse


@pytest.mark.parametrize("name", list(CASES))
def test_prefill_matches_reference(name, device):
    batch = make_paged_batch(MIXED_SEQ, MIXED_Q, loud_future=True, seed=len(name), device=device, **CASES[name])
    check_prefill(batch)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_prefill_bf16_on_gpu(head_dim):
    """bf16 through the real tensor cores (the interpreter widens bf16 dots to float32)."""
    batch = make_paged_batch([700, 1, 333, 1024], [700, 1, 128, 1024], num_q_heads=32, num_kv_heads=8,
                             head_dim=head_dim, block_size=16, dtype="bfloat16", loud_future=True, device="cuda")
    check_prefill(batch)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_ragged_batches(data, device):
    """Weird shapes: random batch, chunk lengths, GQA ratio, head_dim, block_size, dtype, window and soft-cap."""
    num_seqs = data.draw(st.integers(1, 5), "num_seqs")
    seq_lens = data.draw(st.lists(st.integers(0, 90), min_size=num_seqs, max_size=num_seqs), "seq_lens")
    q_lens = [data.draw(st.integers(0, n), f"q_len[{i}]") for i, n in enumerate(seq_lens)]
    kv_heads = data.draw(st.integers(1, 3), "num_kv_heads")
    group = data.draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8]), "group")
    kwargs = dict(
        num_q_heads=kv_heads * group, num_kv_heads=kv_heads,
        head_dim=data.draw(st.sampled_from([32, 40, 64, 80, 96, 128, 136, 192, 256]), "head_dim"),
        block_size=data.draw(st.sampled_from([1, 2, 3, 8, 13, 16, 32, 100, 256]), "block_size"),
        dtype=data.draw(st.sampled_from(["float16", "bfloat16", "float32"]), "dtype"),
        layout=data.draw(st.sampled_from(["separate", "stacked", "interleaved"]), "layout"),
        sliding_window=data.draw(st.none() | st.integers(1, 40), "sliding_window"),
        soft_cap=data.draw(st.none() | st.floats(1.0, 60.0), "soft_cap"),
        seed=data.draw(st.integers(0, 2 ** 16), "seed"),
    )
    if sum(q_lens) == 0:
        q_lens[int(np.argmax(seq_lens))] = max(seq_lens)
    if sum(q_lens) == 0:
        return  # every sequence empty: covered by test_empty_batches
    check_prefill(make_paged_batch(seq_lens, q_lens, loud_future=True, device=device, **kwargs))


def test_without_lse_returns_the_same_output(device):
    batch = make_paged_batch([23, 40], [23, 7], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=8,
                             dtype="float16", loud_future=True, device=device)
    out = T.paged_prefill(*batch.prefill_args())
    out2, _ = T.paged_prefill(*batch.prefill_args(), return_lse=True)
    assert torch.equal(out, out2)
    assert_close(out, R.paged_prefill(*batch.prefill_args()), atol=attention_out_atol("float16", batch.v_max()))


# --- KV split (this project's launcher: num_splits, num_sms) -------------------------------------------------

# (case, splits): odd GQA and block size, an fp8 cache, a window (40 splits: most splits of its tiles empty), a
# window with soft-cap
SPLIT_CASES = [("fp16-gqa4-d128-bs16", 2), ("bf16-gqa5-d80-bs7", 3), ("bf16-fp8cache-gqa4-d128-bs16", 7),
               ("fp16-window13-d64-bs5", 12), ("bf16-window32-softcap30-gqa2-d128", 3)]
# the mixed batch, shorter (the interpreter runs one merge program per token and head): an empty sequence, one
# token, a full prefill, chunks starting mid-sequence (one spanning several key tiles), a decode token
SPLIT_SEQ, SPLIT_Q = [0, 1, 37, 100, 17, 150], [0, 1, 37, 29, 1, 60]


@pytest.mark.slow
@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("name,num_splits", SPLIT_CASES)
def test_kv_split_matches_the_reference_and_the_unsplit_kernel(name, num_splits, device):
    """Any split of each tile's key range: the float32 partials merged equal the reference (the same derived
    tolerance: a split adds only float32 merge rounding) and the unsplit kernel. 12 splits of a 13-key window
    leave most splits empty (LSE -inf, merged as no-ops); the poisoned slots and the loud future key of
    ``make_paged_batch`` catch a split that reads past its range or its row's causal limit."""
    batch = make_paged_batch(SPLIT_SEQ, SPLIT_Q, loud_future=True, seed=len(name), device=device, **CASES[name])
    out, lse = check_prefill(batch, num_splits=num_splits)
    base_out, base_lse = T.paged_prefill(*batch.prefill_args(), return_lse=True, num_splits=1, **batch.kwargs)
    magnitude, logit_max = batch.attention_scales()
    dtype = batch.q.dtype
    assert_close(out, base_out, atol=2 * attention_out_atol(dtype, magnitude), name="out vs num_splits=1")
    assert_close(lse, base_lse, atol=2 * lse_atol(dtype, logit_max), name="lse vs num_splits=1")
    if num_splits == 12:  # the cheapest case: without return_lse the merge's LSE scratch changes nothing
        assert torch.equal(T.paged_prefill(*batch.prefill_args(), num_splits=num_splits, **batch.kwargs), out)


@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_kv_split_keeps_a_nan_value_to_the_rows_that_see_it(device):
    """A NaN value in a key the query sees poisons its row in whichever split holds it; rows that cannot see
    that key stay finite in every split."""
    batch = make_paged_batch([70], [70], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=8,
                             dtype="float16", device=device)
    bad = 40  # keys 0..69; queries >= 40 see it
    block = batch.block_table[0, bad // 8 : bad // 8 + 1]  # a device index (no host read: the meta run too)
    batch.v_cache[block, bad % 8, 1, 3] = float("nan")
    out, lse = T.paged_prefill(*batch.prefill_args(), return_lse=True, num_splits=3)
    rows_nan = torch.isnan(out[:, 2:4]).any(dim=-1).any(dim=-1).cpu()
    assert rows_nan[bad:].all() and not rows_nan[:bad].any(), rows_nan.nonzero().ravel().tolist()
    assert not torch.isnan(out[:, :2]).any()  # KV head 0's query heads never see the NaN
    assert torch.isnan(lse[bad:, 2:4]).all() and not torch.isnan(lse[:bad]).any()


@pytest.mark.servekernels  # our KV split (num_splits is this project's extra)
def test_kv_split_counts_each_sink_once(device):
    """Split 0 of a row carries its sink, the other splits none: merged, the split run equals the reference (a
    sink counted per split would be 5 sinks). A NaN sink makes its head NaN in every row, and only its head."""
    batch = make_paged_batch([140, 5], [12, 5], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=8,
                             dtype="float16", loud_future=True, sink_logit=4.0, device=device)
    fine = check_prefill(batch, num_splits=5)
    batch.kwargs["sinks"][1] = float("nan")
    out, lse = T.paged_prefill(*batch.prefill_args(), return_lse=True, num_splits=5, **batch.kwargs)
    assert out[:, 1].isnan().all() and lse[:, 1].isnan().all()
    others = [0, 2, 3]
    assert torch.equal(out[:, others], fine[0][:, others]) and torch.equal(lse[:, others], fine[1][:, others])


@pytest.mark.host_only("the split plan: arithmetic only")
@pytest.mark.servekernels
def test_split_plan():
    from kernels.triton.ops.paged_prefill import MAX_SPLITS, MIN_SPLIT_KEYS, SPLIT_BELOW_WAVES, prefill_splits

    # a 512-token chunk at 8k (17 tiles x 8 KV heads): 4 waves' worth of slots on 132 SMs wants ceil(528/136) = 4
    assert prefill_splits(136, 8192, 132) == 4
    assert prefill_splits(136, 8192, 58) == 1  # an L4 (58 SMs): 2.3 waves already
    assert prefill_splits(100, 8192, 58) == 3  # ceil(4 * 58 / 100)
    assert prefill_splits(520, 2048, 132) == 1  # a full 2k prefill: 3.9 waves already
    assert prefill_splits(SPLIT_BELOW_WAVES * 132, 1 << 20, 132) == 1
    assert prefill_splits(SPLIT_BELOW_WAVES * 132 - 1, 1 << 20, 132) == 3  # ceil(528 / 263)
    assert prefill_splits(8, 3 * MIN_SPLIT_KEYS, 132) == 3  # capped by the keys per split
    assert prefill_splits(8, MIN_SPLIT_KEYS - 1, 132) == 1  # a short context never splits
    assert prefill_splits(1, 1 << 20, 132) == MAX_SPLITS


@pytest.mark.host_only("launch plans at a full shape, recorded without running (lazy inputs, no kernel executes)")
@pytest.mark.servekernels
def test_split_plan_of_the_catalogue_chunk_and_its_modes():
    """The 512-token chunk at 8k splits 4 ways (grid 17 x 8 x 4, then the merge), with or without validation
    (the hints give the same plan), and never with ``batch_invariant``; the full 2k prefill does not split."""
    from kernels.ops import get
    from roofline.counting import launches_only
    from roofline.lazy_inputs import lazy_inputs

    cases = {c.name: c for c in get("paged_prefill").cases()}

    def grids(name, **kw):
        args, kwargs = lazy_inputs(cases[name])
        with launches_only() as rec:
            T.paged_prefill(*args, **kwargs, **kw)
        return [(launch.kernel, tuple(launch.grid)) for launch in rec.launches]

    chunk = "llama3-8b/prefill/chunk512-at-8k"
    split = [("_paged_prefill_kernel", (17, 8, 4)), ("_merge_kernel", (512, 32, 1))]
    assert grids(chunk, num_sms=132) == split
    assert grids(chunk, num_sms=132, validate=False, max_query_len=512, max_seq_len=8192) == split
    assert grids(chunk, num_sms=132, batch_invariant=True)[0][1][2] == 1
    assert grids("llama3-8b/prefill/full-2k", num_sms=132) == [("_paged_prefill_kernel", (65, 8, 1))]


@pytest.mark.bad_input
@pytest.mark.parametrize("num_splits", [0, -1, 2.0, True, 1 << 16])
def test_bad_num_splits_is_a_value_error(num_splits, device):
    batch = make_paged_batch([9], [9], num_q_heads=2, num_kv_heads=1, head_dim=32, block_size=4, dtype="float16",
                             device=device)
    with pytest.raises(ValueError, match="num_splits"):
        T.paged_prefill(*batch.prefill_args(), num_splits=num_splits)


def test_q_as_a_view_of_a_fused_qkv_tensor(device):
    """q sliced out of a [tokens, Hq + 2 Hkv, D] projection (token stride != Hq * D), as serving engines pass it,
    and strided metadata views."""
    batch = make_paged_batch([30, 61], [30, 12], num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16,
                             dtype="float16", loud_future=True, device=device)
    qkv = torch.full((batch.q.shape[0], 10, 64), float("nan"), dtype=torch.float16, device=device)
    qkv[:, :6] = batch.q
    q = qkv[:, :6]
    assert not q.is_contiguous()
    # strided metadata too: a column-sliced block table, every-other-element views of seq_lens and qsl
    wide = torch.full((2, 2 * batch.block_table.shape[1]), -1, dtype=torch.int32, device=device)
    wide[:, ::2] = batch.block_table
    seq_lens = torch.stack([batch.seq_lens, batch.seq_lens + 1000], dim=1).reshape(-1)[::2]
    qsl = torch.stack([batch.query_start_loc, -batch.query_start_loc], dim=1).reshape(-1)[::2]
    assert wide[:, ::2].stride(1) == 2 and seq_lens.stride(0) == 2 and qsl.stride(0) == 2
    out, lse = T.paged_prefill(q, batch.k_cache, batch.v_cache, wide[:, ::2], seq_lens, qsl, return_lse=True)
    ref_out, ref_lse = R.paged_prefill(*batch.prefill_args(), return_lse=True)
    assert_close(out, ref_out, atol=attention_out_atol("float16", batch.v_max()))
    assert_close(lse, ref_lse, atol=lse_atol("float16", batch.logit_max()))


def test_soft_cap_never_overflows(device):
    """Logits near 1e6: an uncapped exp, or tanh written as (e^2x - 1)/(e^2x + 1), gives inf/NaN here."""
    batch = make_paged_batch([50, 9], [50, 4], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
                             dtype="float32", device=device, scale=1e5, soft_cap=20.0)
    out, lse = check_prefill(batch)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_empty_batches(device):
    """No query token at all (every chunk empty, sequences empty or not): empty outputs, nothing launched."""
    batch = make_paged_batch([0, 12, 0], [0, 0, 0], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=4,
                             device=device)
    out, lse = T.paged_prefill(*batch.prefill_args(), return_lse=True)
    assert out.shape == (0, 4, 32) and lse.shape == (0, 4)


def test_chunked_prefill_equals_one_shot(device):
    """One sequence prefilled in chunks (each call sees the keys written so far) equals one call over it all."""
    seq_len, chunks = 131, [30, 1, 47, 53]
    batch = make_paged_batch([seq_len], [seq_len], num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=16,
                             dtype="float16", loud_future=True, seed=7, device=device)
    one_shot, one_lse = check_prefill(batch)
    done = 0
    for n in chunks:
        qsl = torch.tensor([0, n], dtype=torch.int32, device=device)
        sl = torch.tensor([done + n], dtype=torch.int32, device=device)
        q = batch.q[done:done + n]
        out, lse = T.paged_prefill(q, batch.k_cache, batch.v_cache, batch.block_table, sl, qsl, return_lse=True)
        ref_out, ref_lse = R.paged_prefill(q, batch.k_cache, batch.v_cache, batch.block_table, sl, qsl,
                                           return_lse=True)
        atol = attention_out_atol("float16", batch.v_max())
        assert_close(out, one_shot[done:done + n], atol=atol, name=f"chunk at {done}: out vs one-shot")
        assert_close(out, ref_out, atol=atol, name=f"chunk at {done}: out vs reference")
        assert_close(lse, one_lse[done:done + n], atol=lse_atol("float16", batch.logit_max()),
                     name=f"chunk at {done}: lse vs one-shot", allow_vacuous=True)
        assert_close(lse, ref_lse, atol=lse_atol("float16", batch.logit_max()), name=f"chunk at {done}: lse",
                     allow_vacuous=True)
        done += n
    assert done == seq_len


@pytest.mark.parametrize("window", [None, 9])
def test_decode_equals_one_token_prefill(window, device):
    """paged_decode and a prefill whose chunks are all one token long: kernel vs kernel, both vs reference."""
    # no loud key: every query here is its sequence's last, which may see it (it would hide all other keys)
    batch = make_paged_batch([1, 45, 130, 16], num_q_heads=10, num_kv_heads=2, head_dim=80, block_size=16,
                             dtype="float16", seed=3, device=device, sliding_window=window)
    qsl = torch.arange(5, dtype=torch.int32, device=device)
    pre, pre_lse = T.paged_prefill(*batch.decode_args(), qsl, return_lse=True, **batch.kwargs)
    dec, dec_lse = T.paged_decode(*batch.decode_args(), return_lse=True, **batch.kwargs)
    ref, ref_lse = R.paged_decode(*batch.decode_args(), return_lse=True, **batch.kwargs)
    atol, latol = attention_out_atol("float16", batch.v_max()), lse_atol("float16", batch.logit_max())
    assert_close(pre, dec, atol=atol, name="prefill vs decode")
    assert_close(pre, ref, atol=atol, name="prefill vs reference")
    assert_close(dec, ref, atol=atol, name="decode vs reference")
    assert_close(pre_lse, dec_lse, atol=latol, name="lse prefill vs decode")
    assert_close(pre_lse, ref_lse, atol=latol, name="lse prefill vs reference")


# ---------------------------------------------------------------------------------------------------------------
# Tiles above the causal diagonal (or before the sliding window) are never loaded: count real K loads per program
# under the interpreter, independently of the kernel's code.


def _record_k_loads(k_cache):
    """Patch the interpreter's load: per program id, the number of load instructions aimed at ``k_cache`` and
    the (block, slot) pairs their enabled lanes read. Returns (records, restore)."""
    from triton.runtime import interpreter as I

    base = k_cache.data_ptr()
    esize = k_cache.element_size()
    nbytes = k_cache.numel() * esize
    s_block, s_slot = k_cache.stride(0), k_cache.stride(1)
    records: dict = {}
    builder = I.interpreter_builder
    original = I.InterpreterBuilder.create_masked_load

    def create_masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        addr = np.asarray(ptrs.data).astype(np.int64).ravel()
        inside = (addr >= base) & (addr < base + nbytes)
        if inside.all() and addr.size > 1:
            rec = records.setdefault(builder.grid_idx, {"loads": 0, "slots": set()})
            rec["loads"] += 1
            elem = (addr[np.asarray(mask.data).ravel()] - base) // esize
            rec["slots"].update(zip((elem // s_block).tolist(), (elem % s_block // s_slot).tolist()))
        return original(self, ptrs, mask, other, cache_policy, is_volatile)

    I.InterpreterBuilder.create_masked_load = create_masked_load
    return records, lambda: setattr(I.InterpreterBuilder, "create_masked_load", original)


def _expected_key_tiles(seq_lens, q_lens, block_q, block_n, window):
    """Per global query tile: (sequence, first key tile start, key end) by the contract's visibility rule."""
    tiles, qsl = {}, np.concatenate([[0], np.cumsum(q_lens)])
    for i, (n, ql) in enumerate(zip(seq_lens, q_lens)):
        for local in range(-(-ql // block_q)):
            first_q, last_q = local * block_q, min(local * block_q + block_q, ql) - 1
            kv_end = n - ql + last_q + 1
            kv_begin = 0 if window is None else max(n - ql + first_q - window + 1, 0)
            tiles[qsl[i] // block_q + i + local] = (i, kv_begin // block_n * block_n, kv_end)
    return tiles


@pytest.mark.interpreter("counts key-tile loads by patching the Triton interpreter")
@pytest.mark.skipif(not interpreter_enabled(), reason="counts loads by patching the Triton interpreter")
@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_tiles_outside_the_causal_band_are_never_loaded(window):
    from kernels.triton.ops.paged_prefill import prefill_tiles

    seq_lens, q_lens = [200, 90, 3], [200, 40, 3]
    batch = make_paged_batch(seq_lens, q_lens, num_q_heads=2, num_kv_heads=1, head_dim=32, block_size=16,
                             dtype="float32", sliding_window=window, loud_future=True)
    cfg = prefill_tiles(2, 32, max(q_lens))
    block_q, block_n = cfg["BLOCK_Q"], cfg["BLOCK_N"]
    assert block_q < 200 and block_n < 200, "the test needs several query and key tiles per sequence"
    expected = _expected_key_tiles(seq_lens, q_lens, block_q, block_n, window)
    records, restore = _record_k_loads(batch.k_cache)
    try:
        out = T.paged_prefill(*batch.prefill_args(), **batch.kwargs)
    finally:
        restore()
    assert_close(out, R.paged_prefill(*batch.prefill_args(), **batch.kwargs),
                 atol=attention_out_atol("float32", batch.v_max()))
    bt = batch.block_table.numpy()
    position = {i: {(int(bt[i, t // 16]), t % 16): t for t in range(n)} for i, n in enumerate(seq_lens)}
    seen = set()
    for (tile, head, _), rec in records.items():
        assert tile in expected, f"program {tile} has no query tile but loaded {rec['loads']} K tiles"
        seq, begin, end = expected[tile]
        want = -(-(end - begin) // block_n)
        assert rec["loads"] == want, f"query tile {tile} (seq {seq}) loaded {rec['loads']} K tiles, needs {want}"
        keys = sorted(position[seq][s] for s in rec["slots"])
        assert keys == list(range(begin, end)), f"query tile {tile} read keys {keys[0]}..{keys[-1]}"
        seen.add(tile)
    assert seen == set(expected), "every query tile must load its keys"
    # the point of the test: the longest sequence's first query tiles stop far before its end
    assert min(e for s, _, e in expected.values() if s == 0) < 200 - block_n


# ---------------------------------------------------------------------------------------------------------------
# The GPU path compiles: the launcher's own launch arguments, compiled by Triton for an H100 (sm_90) down to a
# cubin, no GPU needed. Catches what the interpreter lets through (dot shapes, dtype mixes, loop-carried types,
# int specialisation), in a subprocess because this process runs Triton in interpreter mode.

COMPILE_CONFIGS = [
    (MIXED_SEQ, MIXED_Q, dict(num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16, dtype="float16"), {}),
    ([50], [20], dict(num_q_heads=10, num_kv_heads=2, head_dim=80, block_size=7, dtype="bfloat16",
                      kv_dtype="float8_e4m3fn", k_scale=0.5, v_scale=2.0, sink_logit=3.0),
     dict(sliding_window=16, soft_cap=30.0)),
    ([40, 9], [1, 1], dict(num_q_heads=2, num_kv_heads=2, head_dim=256, block_size=1, dtype="float32",
                           layout="interleaved"), {}),
]


def compile_prefill_configs() -> None:
    from kernels.triton.ops.paged_prefill import _paged_prefill_kernel, launch_arguments
    from kernels.validate import check_attention

    for seq_lens, q_lens, batch_kwargs, call_kwargs in COMPILE_CONFIGS:
        b = make_paged_batch(seq_lens, q_lens, **batch_kwargs, **call_kwargs)
        kw = dict(b.kwargs)
        dims = check_attention(*b.prefill_args(), **kw)
        out, lse = torch.empty_like(b.q), torch.empty(b.q.shape[:2], dtype=torch.float32)
        _, args, meta, _ = launch_arguments(dims, b.q, b.k_cache, b.v_cache, b.block_table, b.seq_lens,
                                            b.query_start_loc, out, lse, sliding_window=kw.get("sliding_window"),
                                            soft_cap=kw.get("soft_cap"), k_scale=kw.get("k_scale", 1.0),
                                            v_scale=kw.get("v_scale", 1.0), return_lse=True, num_splits=3,
                                            sinks=kw.get("sinks"))
        kernel = compile_sm90(_paged_prefill_kernel, args, meta)
        print("compiled", batch_kwargs, call_kwargs, "cubin bytes", len(kernel.asm["cubin"]), flush=True)


@pytest.mark.host_only("compiles for sm_90 in a child process (ptxas, no GPU needed): nothing launches")
@pytest.mark.slow
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_prefill_compiles_for_h100():
    run_compile_child("correctness.test_paged_prefill")


if __name__ == "__main__" and sys.argv[1:] == ["--compile-sm90"]:
    compile_prefill_configs()
