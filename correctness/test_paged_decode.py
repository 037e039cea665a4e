"""Triton ``paged_decode`` against the float64 reference on poisoned, ragged, non-sequential paged batches.

Every batch comes from ``make_paged_batch``: unowned slots and spare blocks hold NaN, block-table entries past
a sequence's last block hold -1 or an id outside the cache, so a kernel that reads anything it must not
produces NaN and fails. Lengths always include 0, 1, a partial last block and one long enough to be cut into
several partitions by the split heuristic (default 132 SMs).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.testing.assertions import assert_bitwise_equal, assert_close
from kernels.testing.diagnosis import for_batch
from kernels.testing.paged import make_paged_batch
from kernels.testing.tolerances import attention_out_atol, attention_out_atol_tight, lse_atol
from kernels import reference as R
from correctness.impl import T
from kernels.triton.ops.paged_decode import MIN_SPLIT_TOKENS, SplitPlan, split_heuristic

LENS = [0, 1, 37, 16, 300, 129]  # empty, one token, partial block, full block, several partitions


def check(batch, dtype, **call):
    """Kernel vs reference, out and LSE, with derived tolerances; returns the kernel's (out, lse)."""
    out, lse = T.paged_decode(*batch.decode_args(), **batch.kwargs, **call, return_lse=True)
    ref_out, ref_lse = R.paged_decode(*batch.decode_args(), **batch.kwargs, return_lse=True)
    assert out.dtype == batch.q.dtype and out.shape == batch.q.shape
    assert lse.dtype == torch.float32 and lse.shape == batch.q.shape[:2]
    magnitude, logit_max = batch.attention_scales(decode=True)  # one pass for both tolerances
    # output rows are convex combinations of V rows: each element's budget scales with its sum_i p_i |v_i|
    assert_close(out, ref_out, atol=attention_out_atol(dtype, magnitude), name="out",
                 diagnose=for_batch(batch, True, "out"))
    # LSE error is bounded by the largest logit error, which scales with the query's largest visible |logit|
    assert_close(lse, ref_lse, atol=lse_atol(dtype, logit_max), name="lse", diagnose=for_batch(batch, True, "lse"))
    empty = batch.seq_lens == 0
    if empty.any():  # no key: out exactly 0, lse exactly -inf (with sinks: the sink, judged above), never NaN
        assert (out[empty] == 0).all()
        assert torch.isneginf(lse[empty]).all() if batch.kwargs.get("sinks") is None else not lse[empty].isnan().any()
    return out, lse


# group ratio (incl. 1, 5, 6, 7, 8, 64), head_dim (64, 80, 128 and 96/192/256), block size (1, 16, 13, 7), dtype
PARITY = [
    (1, 64, 16, "float16"),
    (5, 80, 13, "float16"),
    (6, 128, 1, "float32"),
    (8, 256, 16, "bfloat16"),
    (4, 96, 13, "float32"),
    (7, 192, 7, "float16"),
    (8, 64, 13, "bfloat16"),
    (64, 64, 16, "float16"),  # 64 query heads per KV head: M = 64 rows
]


@pytest.mark.parametrize("group,head_dim,block_size,dtype", PARITY)
def test_parity(group, head_dim, block_size, dtype, device):
    b = make_paged_batch(LENS, num_q_heads=2 * group, num_kv_heads=2, head_dim=head_dim, block_size=block_size,
                         dtype=dtype, seed=group, device=device)
    check(b, dtype)


@pytest.mark.parametrize("layout", ["stacked", "interleaved"])
def test_strided_layouts(layout, device):
    """``kv[0]``/``kv[1]`` of one stacked tensor, ``kv[:, 0]``/``kv[:, 1]`` of an interleaved one, strided q."""
    b = make_paged_batch(LENS, num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16, layout=layout, seed=3,
                         device=device)
    assert b.k_cache.untyped_storage().data_ptr() == b.v_cache.untyped_storage().data_ptr()  # one tensor
    b.q = torch.cat([b.q, torch.full_like(b.q, float("nan"))], dim=-1)[..., :64]  # a view of a wider qkv buffer
    assert b.q.stride(1) == 128
    check(b, "float16")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fp8_cache_with_scales(dtype, device):
    b = make_paged_batch(LENS, num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=16, dtype=dtype,
                         kv_dtype="float8_e4m3fn", k_scale=0.37, v_scale=2.5, seed=4, device=device)
    check(b, dtype)


def test_fp8_scales_as_one_element_tensors(device):
    b = make_paged_batch([5, 140], num_q_heads=4, num_kv_heads=1, head_dim=64, block_size=16,
                         kv_dtype="float8_e4m3fn", k_scale=0.5, v_scale=3.0, seed=5, device=device)
    b.kwargs.update(k_scale=torch.tensor([0.5], device=device), v_scale=torch.tensor(3.0, device=device))
    check(b, "float16")


@pytest.mark.parametrize("window", [1, 36, 1000])  # 36: key 0 of the 37-token sequence is just outside
def test_sliding_window(window, device):
    """A loud token at position 0 (and a loud last token) makes a window that leaks or drops keys fail."""
    b = make_paged_batch(LENS, num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=13, loud_future=True,
                         sliding_window=window, seed=6, device=device)
    check(b, "float16")
    check(b, "float16", num_splits=3)


def test_soft_cap(device):
    b = make_paged_batch(LENS, num_q_heads=5, num_kv_heads=1, head_dim=80, block_size=16, dtype="float32",
                         soft_cap=2.0, seed=7, device=device)
    check(b, "float32")


@pytest.mark.meta_unsupported("checks the logits' size on the host values before the launch")
def test_soft_cap_with_logits_that_overflow_a_naive_tanh(device):
    """|s / cap| reaches hundreds: exp(2x) is inf in float32 past x ~ 44, so (e^2x - 1)/(e^2x + 1) is NaN."""
    b = make_paged_batch([1, 37, 200], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
                         soft_cap=0.5, scale=5.0, seed=8, device=device)
    q, k = b.q.double().cpu(), R.gather_kv(b.k_cache, b.v_cache, b.block_table[2].cpu().numpy(), 200)[0]
    assert 5.0 * np.abs(np.einsum("hd,khd->hk", q[2, :2].numpy(), k[:, :1])).max() / 0.5 > 200
    out, lse = check(b, "float16")
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_thousands_of_keys_expose_a_half_precision_accumulator(dtype, device):
    """2,900 and 8,200 keys, each sequence in one partition (``num_splits=1``: every tile adds into one running
    sum), values offset by +2 so they do not cancel (|out| ~ sum p |v|; a zero-mean V hides the running sum's
    roundings), logits within +-2.5 (no subnormal weight). ``attention_out_atol_tight`` (about 3 u, every
    allowed rounding at its worst) passes a float32 accumulator and fails one rounded to float16/bfloat16 per tile
    (up to ~10 u here)."""
    b = make_paged_batch([2900, 8200], num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=16, dtype=dtype,
                         seed=5, q_scale=0.5, device=device)
    b.v_cache.copy_((b.v_cache.double() + 2.0).to(b.v_cache.dtype))  # NaN poison stays NaN
    out = T.paged_decode(*b.decode_args(), **b.kwargs, num_splits=1)
    ref_out = R.paged_decode(*b.decode_args(), **b.kwargs)
    magnitude, logit_max = b.attention_scales(decode=True)
    assert (np.abs(ref_out) > 0.5 * magnitude).all()  # the offset did its job: no cancellation to hide behind
    assert_close(out, ref_out, atol=attention_out_atol_tight(dtype, magnitude, logit_max), name="out")


@pytest.mark.parametrize("num_splits", [2, 3, 7, 40])
def test_any_num_splits_equals_no_split(num_splits, device):
    """Cutting each sequence into P partitions (40: more than the 19 blocks of the longest) changes only
    rounding; sequences shorter than P tokens leave partitions empty."""
    b = make_paged_batch(LENS, num_q_heads=6, num_kv_heads=1, head_dim=64, block_size=16, seed=9, device=device)
    base_out, base_lse = check(b, "float16", num_splits=1)
    out, lse = check(b, "float16", num_splits=num_splits)
    assert_close(out, base_out, atol=attention_out_atol("float16", b.v_max()), name="out vs num_splits=1")
    assert_close(lse, base_lse, atol=lse_atol("float16", b.logit_max()), name="lse vs num_splits=1")


def test_split_size_makes_a_sequence_independent_of_its_batch(device):
    """With ``split_size`` fixed, a sequence's out and LSE are bitwise the same alone and inside a batch.

    Sequence 0 (300 tokens, 3 partitions) shares its batch with a 700-token one (7 partitions); sequence 1
    (5 tokens) is written directly when alone and through the merge of 7 partials inside the batch.
    """
    b = make_paged_batch([300, 5, 700, 0], num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16, seed=10,
                         device=device)
    out, lse = check(b, "float16", split_size=100)
    for i in (0, 1, 3):
        alone = T.paged_decode(b.q[i:i + 1], b.k_cache, b.v_cache, b.block_table[i:i + 1], b.seq_lens[i:i + 1],
                               split_size=100, return_lse=True)
        assert_bitwise_equal(alone[0], out[i:i + 1], name=f"out of sequence {i}")
        assert_bitwise_equal(alone[1], lse[i:i + 1], name=f"lse of sequence {i}")


# --- attention sinks (gpt-oss): one logit per query head in every softmax, counted once however the keys split ---

SINK_LENS = [1, 37, 300, 129]  # one key, a partial block, several partitions (empty sequences: the tests below)


@pytest.mark.parametrize("kv_dtype,window,num_splits", [
    (None, None, 4), (None, 64, 1), ("float8_e4m3fn", None, 5),
    pytest.param(None, None, None, marks=pytest.mark.slow), pytest.param(None, 64, 3, marks=pytest.mark.slow),
    pytest.param("float8_e4m3fn", 100, None, marks=pytest.mark.slow)])
def test_sinks(kv_dtype, window, num_splits, device):
    """Sinks near the LSE (``sink_logit=4``: a good share of every softmax) on the poisoned ragged batch, one
    partition or several (the sink opens partition 0 only: counted per partition, it would be 4 or 5 sinks),
    with a window (the sink is not windowed) and through the fp8 cache."""
    fp8 = dict(kv_dtype=kv_dtype, k_scale=0.37, v_scale=2.5) if kv_dtype else {}
    b = make_paged_batch(SINK_LENS, num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=16, dtype="bfloat16",
                         sliding_window=window, sink_logit=4.0, seed=12, device=device, **fp8)
    check(b, "bfloat16", num_splits=num_splits)


def test_a_minus_inf_sink_changes_nothing_and_an_empty_sequence_returns_its_sink(device):
    b = make_paged_batch([0, 200, 7], num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16, seed=13,
                         device=device)
    plain = T.paged_decode(*b.decode_args(), num_splits=3, return_lse=True)
    none = torch.full((6,), float("-inf"), device=device)
    out, lse = T.paged_decode(*b.decode_args(), num_splits=3, return_lse=True, sinks=none)
    assert_close(out, plain[0], atol=attention_out_atol("float16", b.v_max()), name="out, sinks -inf")
    assert_close(lse, plain[1], atol=lse_atol("float16", b.logit_max()), name="lse, sinks -inf")
    sinks = torch.tensor([0.5, -3.0, 2.0, 7.5, -0.25, 1.0], device=device)
    out, lse = T.paged_decode(*b.decode_args(), return_lse=True, sinks=sinks)
    assert (out[0] == 0).all()
    assert_close(lse[0], sinks, atol=lse_atol("float16", sinks.abs().double().cpu().numpy()), name="empty LSE")


@pytest.mark.parametrize("bad", [float("nan"), pytest.param(float("inf"), marks=pytest.mark.slow)])
def test_a_nan_or_plus_inf_sink_poisons_its_head_only(bad, device):
    b = make_paged_batch([0, 5, 140], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16, sink_logit=3.0,
                         seed=14, device=device)
    fine = check(b, "float16", num_splits=3)
    b.kwargs["sinks"][2] = bad
    out, lse = T.paged_decode(*b.decode_args(), **b.kwargs, num_splits=3, return_lse=True)
    assert out[:, 2].isnan().all() and lse[:, 2].isnan().all()  # the empty sequence's row too
    others = [0, 1, 3]
    assert_bitwise_equal(out[:, others], fine[0][:, others], name="out of the other heads")
    assert_bitwise_equal(lse[:, others], fine[1][:, others], name="lse of the other heads")


@pytest.mark.servekernels  # batch_invariant's fixed partitions are this project's
def test_sinks_keep_a_sequence_bitwise_independent_of_its_batch(device):
    """``batch_invariant=True`` (partitions of a fixed length): a sequence's out and LSE with sinks are the same
    bits alone and in a batch whose other sequences have more partitions."""
    b = make_paged_batch([300, 5, 600, 0], num_q_heads=4, num_kv_heads=1, head_dim=64, block_size=16, seed=15,
                         sink_logit=4.0, device=device)
    out, lse = check(b, "float16", batch_invariant=True)
    for i in (0, 1, 3):
        alone = T.paged_decode(b.q[i:i + 1], b.k_cache, b.v_cache, b.block_table[i:i + 1], b.seq_lens[i:i + 1],
                               batch_invariant=True, return_lse=True, sinks=b.kwargs["sinks"])
        assert_bitwise_equal(alone[0], out[i:i + 1], name=f"out of sequence {i}")
        assert_bitwise_equal(alone[1], lse[i:i + 1], name=f"lse of sequence {i}")


@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_num_sms_changes_only_the_partitioning(device):
    b = make_paged_batch([0, 700, 33], num_q_heads=4, num_kv_heads=1, head_dim=64, block_size=16, seed=11, device=device)
    check(b, "float16", num_sms=1)  # already enough programs: no split
    check(b, "float16", num_sms=4096)  # as many partitions as MIN_SPLIT_TOKENS allows


# --- the split heuristic, pure python ---------------------------------------------------------------------

@pytest.mark.host_only("the split heuristic: arithmetic only")
@pytest.mark.parametrize("num_kv_heads", [1, 2, 8])
@pytest.mark.parametrize("num_sms", [132, 78, 264])
@pytest.mark.parametrize("span", [32768, 131072])
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_heuristic_fills_the_machine_for_one_long_sequence(num_kv_heads, num_sms, span):
    plan = split_heuristic(1, num_kv_heads, span, num_sms=num_sms, tile=64)
    if num_kv_heads * (span // MIN_SPLIT_TOKENS) >= num_sms:  # the context can feed the whole machine
        assert num_kv_heads * plan.num_parts >= num_sms
    else:
        assert plan.part_len == MIN_SPLIT_TOKENS
    assert plan.part_len % 64 == 0 and plan.part_len >= MIN_SPLIT_TOKENS
    assert plan.num_parts * plan.part_len >= span > (plan.num_parts - 1) * plan.part_len  # none empty


@pytest.mark.host_only("the split heuristic: arithmetic only")
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_heuristic_does_not_split_a_full_batch_or_a_short_context():
    assert split_heuristic(64, 8, 32768, num_sms=132) == SplitPlan(1, 0)  # 512 programs already
    assert split_heuristic(1, 8, 100, num_sms=132) == SplitPlan(1, 0)  # one partition's worth of keys
    small = split_heuristic(1, 1, 1000, num_sms=132)  # wants 132, MIN_SPLIT_TOKENS allows 8
    assert small.num_parts == -(-1000 // MIN_SPLIT_TOKENS)


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.host_only("the split heuristic: arithmetic only")
def test_heuristic_aims_for_resident_blocks_per_sm():
    """The target is SPLIT_BLOCKS_PER_SM programs per SM, not one per SM: 16 x 8 = 128 programs of a 132-SM
    machine split in 4 (512 programs) rather than 2; a batch already past one program per SM splits too."""
    from kernels.triton.ops.paged_decode import SPLIT_BLOCKS_PER_SM

    assert SPLIT_BLOCKS_PER_SM == 3
    assert split_heuristic(16, 8, 8192, num_sms=132, blocks_per_sm=1) == SplitPlan(2, 4096)
    assert split_heuristic(16, 8, 8192, num_sms=132) == SplitPlan(4, 2048)
    assert split_heuristic(20, 8, 8192, num_sms=132).num_parts * 160 >= 132 * 3  # 160 programs, 396 wanted
    assert split_heuristic(50, 8, 8192, num_sms=132) == SplitPlan(1, 0)  # 400 programs already


# --- bad input: ValueError naming the argument, before any launch -----------------------------------------

def _args(batch, **changes):
    return {**dict(zip(("q", "k_cache", "v_cache", "block_table", "seq_lens"), batch.decode_args())), **changes}


def _outside(ok):
    table = ok.block_table.clone()
    table[1, 1] = ok.k_cache.shape[0]  # in use (sequence 1 needs 3 blocks), one past the cache
    return table


def _long(ok):
    return make_paged_batch([70000], num_q_heads=1, num_kv_heads=1, head_dim=32, block_size=256, poison=False,
                            device=ok.q.device)


# (argument the message must name, call arguments built from a float16 batch `ok` and an fp8 one `fp8`)
BAD = [
    ("q", lambda ok, fp8: _args(ok, q=ok.q[:, :3])),  # 3 query heads over 2 KV heads
    ("k_cache", lambda ok, fp8: _args(ok, q=ok.q.new_zeros(2, 4, 32))),  # head_dim mismatch
    ("q", lambda ok, fp8: _args(ok, q=ok.q.new_zeros(2, 4, 60), k_cache=ok.q.new_zeros(8, 16, 2, 60),
                                v_cache=ok.q.new_zeros(8, 16, 2, 60))),  # head_dim not a multiple of 8
    ("q", lambda ok, fp8: _args(ok, q=ok.q[:1])),  # one query for two sequences
    ("k_cache", lambda ok, fp8: _args(ok, q=ok.q.float())),  # q float32 over a float16 cache
    ("v_cache", lambda ok, fp8: _args(ok, v_cache=ok.v_cache.float())),
    ("v_cache", lambda ok, fp8: _args(ok, v_cache=ok.v_cache[:, :8])),
    ("q", lambda ok, fp8: _args(fp8, q=fp8.q.double())),
    ("block_table", lambda ok, fp8: _args(ok, block_table=ok.block_table[:, :1])),  # too short for 40 tokens
    ("block_table", lambda ok, fp8: _args(ok, block_table=_outside(ok))),
    ("block_table", lambda ok, fp8: _args(ok, block_table=ok.block_table.to("meta"))),  # wrong device
    ("seq_lens", lambda ok, fp8: _args(ok, seq_lens=ok.seq_lens[:1])),
    ("seq_lens", lambda ok, fp8: _args(ok, seq_lens=ok.seq_lens.new_tensor([5, -1]))),
    ("blocks_per_sm", lambda ok, fp8: _args(ok, blocks_per_sm=0)),
    ("num_splits", lambda ok, fp8: _args(ok, num_splits=0)),
    ("num_splits", lambda ok, fp8: _args(ok, num_splits=-2)),
    ("num_splits", lambda ok, fp8: _args(ok, num_splits=2.5)),
    ("num_splits", lambda ok, fp8: _args(ok, num_splits=True)),
    ("split_size", lambda ok, fp8: _args(ok, split_size=0)),
    ("num_splits", lambda ok, fp8: _args(ok, num_splits=2, split_size=16)),  # both
    ("num_sms", lambda ok, fp8: _args(ok, num_sms=0)),
    ("sliding_window", lambda ok, fp8: _args(ok, sliding_window=0)),
    ("soft_cap", lambda ok, fp8: _args(ok, soft_cap=-1.0)),
    ("k_scale", lambda ok, fp8: _args(fp8, k_scale=0.0)),
    ("v_scale", lambda ok, fp8: _args(fp8, v_scale=torch.ones(2, device=fp8.q.device))),
    ("scale", lambda ok, fp8: _args(ok, scale=float("nan"))),
    ("sinks", lambda ok, fp8: _args(ok, sinks=torch.zeros(3, device=ok.q.device))),  # not one per query head
    ("sinks", lambda ok, fp8: _args(ok, sinks=torch.zeros(4, dtype=torch.float16, device=ok.q.device))),
    ("sinks", lambda ok, fp8: _args(ok, sinks=torch.zeros(1, 4, device=ok.q.device))),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("arg,build", BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_the_argument(arg, build, device):
    ok = make_paged_batch([5, 40], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16, device=device)
    fp8 = make_paged_batch([5, 40], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16,
                           kv_dtype="float8_e4m3fn", device=device)
    kwargs = build(ok, fp8)
    before = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        T.paged_decode(**kwargs)
    for k, v in before.items():  # nothing written
        assert_bitwise_equal(kwargs[k], v, name=k)


@pytest.mark.bad_input
@pytest.mark.servekernels  # this kernel's grid limit, not the contract's
def test_more_partitions_than_the_grid_holds_is_a_value_error(device):
    ok = make_paged_batch([5, 40], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16, device=device)
    with pytest.raises(ValueError, match=r"^split_size\b"):
        T.paged_decode(**_args(_long(ok), split_size=1))  # 70000 partitions > the grid's 65535


# --- GPU only ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_gpu_bfloat16_long_context(device):
    b = make_paged_batch([1, 4097, 1000, 0, 33], num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16,
                         dtype="bfloat16", device=device, seed=12)
    check(b, "bfloat16")
    check(b, "bfloat16", split_size=512)


@pytest.mark.gpu
def test_gpu_cache_past_2_31_elements(device):
    """Block ids times the block stride pass 2**31: offsets must be 64-bit."""
    num_blocks, bs, hkv, d = 2 ** 31 // (16 * 8 * 128) + 64, 16, 8, 128
    k_cache = torch.zeros(num_blocks, bs, hkv, d, dtype=torch.float16, device=device)
    v_cache = torch.zeros_like(k_cache)
    gen = torch.Generator(device=device).manual_seed(0)
    blocks = torch.arange(num_blocks - 40, num_blocks, device=device)  # the last 40 blocks: offsets > 2**31
    k_cache[blocks] = torch.randn(40, bs, hkv, d, generator=gen, device=device, dtype=torch.float16)
    v_cache[blocks] = torch.randn(40, bs, hkv, d, generator=gen, device=device, dtype=torch.float16)
    k_cache[: num_blocks - 40] = float("nan")  # the low aliases a 32-bit offset would wrap onto
    v_cache[: num_blocks - 40] = float("nan")
    assert k_cache.numel() > 2 ** 31
    q = torch.randn(2, 32, d, generator=gen, device=device, dtype=torch.float16)
    table = torch.stack([blocks[:20], blocks[20:]]).to(torch.int32)
    seq_lens = torch.tensor([317, 20 * bs], dtype=torch.int32, device=device)
    out, lse = T.paged_decode(q, k_cache, v_cache, table, seq_lens, return_lse=True)
    ref_out, ref_lse = R.paged_decode(q, k_cache, v_cache, table, seq_lens, return_lse=True)
    v_max = float(v_cache[blocks].abs().max())
    logit_max = d ** -0.5 * float(q.double().norm(dim=-1).max() * k_cache[blocks].double().norm(dim=-1).max())
    assert_close(out, ref_out, atol=attention_out_atol("float16", v_max), name="out")
    assert_close(lse, ref_lse, atol=lse_atol("float16", logit_max), name="lse")


# --- compiled for an H100 without one: the interpreter cannot see register spills or scalar loads ---------

SM90_CONFIGS = [  # (q dtype, cache dtype, head_dim, group, soft_cap/window/fixed split)
    ("fp16", "fp16", 128, 4, False),
    ("bf16", "bf16", 80, 8, True),
    ("bf16", "fp8e4nv", 128, 8, True),
    ("fp16", "fp16", 256, 1, False),
    ("fp16", "fp16", 128, 64, True),  # M = 64 rows: Hopper's warpgroup MMA
    ("bf16", "bf16", 64, 8, True),  # gpt-oss: 64 / 8 heads x 64, window and sinks
]


def _sm90_report(configs) -> list[dict]:
    """Compile the decode and merge kernels for sm_90 with the launcher's tiles and the specialisations a
    launch gets (16-divisible pointers and strides, unit inner strides); report PTX op counts and the cubin's
    resource usage. Needs the interpreter off: run in a fresh process."""
    import collections
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton.ops.paged_decode import _paged_decode_kernel, _tiles
    from kernels.triton.ops.merge_states import _merge_kernel

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

    def build(fn, types, consts, num_warps, num_stages=1):
        sig = {n: types.get(n, "i32") for n in fn.arg_names}
        sig.update({c: "constexpr" for c in consts})
        div16 = [i for i, n in enumerate(fn.arg_names) if n not in consts and (n.endswith("_ptr") or n.startswith("s_"))]
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                        attrs={(i,): [["tt.divisibility", 16]] for i in div16})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        res = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
        ops = collections.Counter(re.findall(r"(?:ld\.global|cp\.async\.\w+|mma\.sync|wgmma\.mma_async)(?:\.v\d)?", k.asm["ptx"]))
        return {"regs": int(res["REG"]), "stack": int(res["STACK"]), "local": int(res["LOCAL"]), "ops": dict(ops)}

    out = []
    for qd, kd, d, group, extras in configs:
        bm, bn, bd = _tiles(d, group)
        types = {"q_ptr": "*" + qd, "k_ptr": "*" + kd, "v_ptr": "*" + kd, "bt_ptr": "*i32", "sl_ptr": "*i32",
                 "out_ptr": "*fp32", "lse_ptr": "*fp32", "qk_scale": "fp32", "v_scale": "fp32", "soft_cap": "fp32",
                 "k_scale_ptr": "*fp32", "v_scale_ptr": "*fp32", "sinks_ptr": "*fp32"}
        consts = dict(s_qd=1, s_btb=1, s_od=1, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                      SOFT_CAP=extras, WINDOW=extras, FIXED_PART=extras, K_SCALE_PTR=extras, V_SCALE_PTR=extras,
                      HAS_SINKS=extras)
        out.append({"kernel": f"decode {qd}/{kd} d{d} g{group}", **build(_paged_decode_kernel, types, consts, 4, 2)})
    types = {"outs_ptr": "*fp32", "lses_ptr": "*fp32", "out_ptr": "*bf16", "lse_ptr": "*fp32"}
    merge = build(_merge_kernel, types, dict(s_od=1, s_md=1, HEAD_DIM=128, BLOCK_D=128), 1)
    out.append({"kernel": "merge d128", **merge})
    return out


@pytest.mark.host_only("compiles for sm_90 in a child process (ptxas, no GPU needed): nothing launches")
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_kernels_compile_for_sm90_without_spills():
    """The PTX/cubin an H100 would run: it compiles, nothing spills to local memory, K/V tiles arrive by 16-byte
    cp.async (pipelined gathers, not scalar loads), both products run on tensor cores (mma.sync, or wgmma
    when the GQA group fills 64 rows)."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from correctness.test_paged_decode import _sm90_report, SM90_CONFIGS; "
            "print(json.dumps(_sm90_report(SM90_CONFIGS)))")
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "TRITON_DEFAULT_FP_FUSION": "1"},
                          capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in report:
        assert r["stack"] == 0 and r["local"] == 0, r  # no spills
        assert r["regs"] <= 255, r
    for r in report[:-1]:
        assert r["ops"].get("cp.async.cg", 0) + r["ops"].get("cp.async.ca", 0) > 0, r
        assert r["ops"].get("mma.sync", 0) + r["ops"].get("wgmma.mma_async", 0) > 0, r  # tensor cores


@pytest.mark.host_only("the split plan's programs per SM: arithmetic and a keyword check, no kernel runs")
@pytest.mark.servekernels
def test_programs_per_sm_cover_each_gpus_memory_latency():
    """The report plans each GPU's splits with the blocks per SM its bandwidth needs (Little's law in
    ``roofline.timing_model``), never more than the split kernel keeps resident; a given value is checked."""
    from kernels.ops import get
    from kernels.triton.ops.paged_decode import DECODE_RESIDENT_BLOCKS, SPLIT_BLOCKS_PER_SM, split_blocks_per_sm
    from roofline.specs import get_spec

    plan = get("paged_decode").plan
    got = {s: round(plan(get_spec(s))["blocks_per_sm"], 2) for s in ("h100-sxm", "h200", "a100-80gb", "l4")}
    # warps needed / 4 warps: bandwidth per SM x 600 ns / 2 KiB per warp (H100 3.35 TB/s, H200 4.8, A100 2.04 over
    # 108 SMs); an L4's 300 GB/s needs less than one block: clamped to 1
    assert got == {"h100-sxm": 1.86, "h200": 2.66, "a100-80gb": 1.38, "l4": 1.0}
    assert all(1 <= b <= DECODE_RESIDENT_BLOCKS for b in got.values())
    assert split_blocks_per_sm(torch.device("cpu"), None) == SPLIT_BLOCKS_PER_SM
    assert split_blocks_per_sm(torch.device("cpu"), 5) == 5.0
    # the 70B decode at batch 32 (256 programs) already covers an H100's latency: no split; an H200's it does not
    assert split_heuristic(32, 8, 8192, num_sms=132, blocks_per_sm=got["h100-sxm"]) == SplitPlan(1, 0)
    assert split_heuristic(32, 8, 8192, num_sms=132, blocks_per_sm=got["h200"]).num_parts == 2
    for bad in (0, -1, 0.5, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="blocks_per_sm"):
            split_blocks_per_sm(torch.device("cpu"), bad)
