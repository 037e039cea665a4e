"""``mla_decode``: the float64 reference's own properties, then the implementation under test against it on
poisoned, ragged, non-sequential paged latent batches (``kernels.testing.mla``: NaN in every slot no sequence
owns, block-table entries past a sequence's last block -1 or outside the cache, lengths with 0, 1 and partial
blocks). Tolerances are derived (``mla_tolerance``) and judged against the reference, never against a kernel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T
from kernels import reference as R
from kernels.ops import get
from kernels.testing.assertions import assert_bitwise_equal, assert_close
from kernels.testing.judge import expected_outputs, judge
from kernels.testing.mla import make_mla_batch, mla_tolerance

LENS = [0, 1, 37, 16, 100]  # empty, one token, a partial block, a full block, several tiles


def check(batch, **call):
    """The implementation vs the reference, out and LSE, derived tolerances; returns its (out, lse)."""
    out, lse = T.mla_decode(*batch.args(), **batch.call_kwargs(), **call, return_lse=True)
    ref_out, ref_lse = R.mla_decode(*batch.args(), **batch.call_kwargs(), return_lse=True)
    assert out.dtype == batch.q_nope.dtype and tuple(out.shape) == tuple(batch.q_nope.shape)
    assert lse.dtype == torch.float32 and tuple(lse.shape) == tuple(batch.q_nope.shape[:2])
    tol = mla_tolerance(batch)
    assert_close(out, ref_out, atol=tol["out"], name="out")
    assert_close(lse, ref_lse, atol=tol["lse"], name="lse")
    qsl = batch.qsl()
    for i, n in enumerate(batch.seq_lens.tolist()):
        if n == 0 and qsl[i + 1] > qsl[i]:  # no key: out exactly 0, LSE exactly -inf, never NaN
            assert (out[qsl[i]:qsl[i + 1]] == 0).all() and torch.isneginf(lse[qsl[i]:qsl[i + 1]]).all()
    return out, lse


# ------------------------------------------------------------------------------ the reference's properties

def _as_gqa(b):
    """The same call as ordinary paged attention with one KV head: K = [c, k_pe], V = [c, 0] (out[..., :R])."""
    r = b.q_nope.shape[-1]
    k = torch.cat([b.kv_c_cache, b.k_pe_cache], dim=-1)[:, :, None]
    v = torch.cat([b.kv_c_cache, torch.zeros_like(b.k_pe_cache)], dim=-1)[:, :, None]
    q = torch.cat([b.q_nope, b.q_pe], dim=-1)
    return q, k, v, r


@pytest.mark.host_only("the float64 reference only")
@pytest.mark.parametrize("q_lens", [None, [0, 1, 3, 2, 8]], ids=["decode", "mtp"])
def test_reference_is_attention_with_one_latent_kv_head(q_lens):
    b = make_mla_batch(LENS, q_lens, num_heads=5, rank=64, rope=32,
                       block_size=7, dtype="float32", seed=1, loud_future=True)
    q, k, v, r = _as_gqa(b)
    out, lse = R.mla_decode(*b.args(), **b.call_kwargs(), return_lse=True)
    if q_lens is None:
        ref_out, ref_lse = R.paged_decode(q, k, v, b.block_table, b.seq_lens, scale=b.kwargs["scale"],
                                          return_lse=True)
    else:
        ref_out, ref_lse = R.paged_prefill(q, k, v, b.block_table, b.seq_lens, b.query_start_loc,
                                           scale=b.kwargs["scale"], return_lse=True)
    np.testing.assert_array_equal(out, ref_out[..., :r])
    np.testing.assert_array_equal(lse, ref_lse)
    assert np.abs(out).max() > 0.1 and np.isfinite(lse).sum() > 0


@pytest.mark.host_only("the float64 reference only")
def test_reference_is_the_formula_natural_log_lse():
    """``s = scale (q_nope . c + q_pe . k_pe)``, ``out = softmax(s) @ c``, ``lse = ln sum exp(s)``, by hand."""
    b = make_mla_batch([9], num_heads=3, rank=32, rope=16, block_size=4, dtype="float32", seed=2)
    out, lse = R.mla_decode(*b.args(), **b.call_kwargs(), return_lse=True)
    blocks = b.block_table[0, :3].long()
    c = b.kv_c_cache[blocks].reshape(-1, 32)[:9].double().numpy()
    kp = b.k_pe_cache[blocks].reshape(-1, 16)[:9].double().numpy()
    s = b.kwargs["scale"] * (b.q_nope[0].double().numpy() @ c.T + b.q_pe[0].double().numpy() @ kp.T)
    w = np.exp(s - s.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out[0], (w / w.sum(axis=1, keepdims=True)) @ c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse[0], np.log(np.exp(s).sum(axis=1)), rtol=1e-12)


@pytest.mark.host_only("the float64 reference only")
def test_reference_split_and_merged_at_head_dim_r_equals_unsplit():
    """Keys [0, a) and [a, n) of one decode query (a at a block boundary: the second part's table starts there),
    merged by ``merge_states`` at head dim R: the unsplit result."""
    bs, n, a = 8, 61, 24
    b = make_mla_batch([n], num_heads=4, rank=48, rope=16, block_size=bs, dtype="float32", seed=3)
    full = R.mla_decode(*b.args(), **b.call_kwargs(), return_lse=True)
    qn, qp, c, kp, bt, _ = b.args()
    # the query at position n - 1 sees every key; a part is the same query over a subset of them
    head = R.mla_decode(qn, qp, c, kp, bt, torch.tensor([a], dtype=torch.int32), scale=b.kwargs["scale"],
                        return_lse=True)
    tail = R.mla_decode(qn, qp, c, kp, bt[:, a // bs:].contiguous(), torch.tensor([n - a], dtype=torch.int32),
                        scale=b.kwargs["scale"], return_lse=True)
    out, lse = R.merge_states(np.stack([head[0], tail[0]]), np.stack([head[1], tail[1]]))
    np.testing.assert_allclose(out, full[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, full[1], rtol=1e-13)
    assert not np.allclose(head[0], full[0], atol=1e-3)  # the parts really differ from the whole


@pytest.mark.host_only("the float64 reference only")
def test_reference_empty_sequences_and_fp8_scale():
    b = make_mla_batch([0, 5], num_heads=2, rank=32, rope=16, block_size=4, dtype="float32",
                       kv_dtype="float8_e4m3fn", kv_scale=0.25, seed=4)
    out, lse = R.mla_decode(*b.args(), **b.call_kwargs(), return_lse=True)
    assert (out[0] == 0).all() and np.isneginf(lse[0]).all() and np.isfinite(lse[1]).all()
    # fp8 with kv_scale: the float32 cache holding the dequantized values, without a scale
    deq = dict(kv_c_cache=b.kv_c_cache.float() * 0.25, k_pe_cache=b.k_pe_cache.float() * 0.25)
    out2, lse2 = R.mla_decode(b.q_nope, b.q_pe, deq["kv_c_cache"], deq["k_pe_cache"], b.block_table, b.seq_lens,
                              scale=b.kwargs["scale"], return_lse=True)
    np.testing.assert_allclose(out, out2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, lse2, rtol=1e-12)


# -------------------------------------------------------------------------------------------------- parity

# (heads, rank, rope, block_size, dtype): DeepSeek's 512/64 at 16 heads, an odd head count over the half-width
# latent, block size 1 and an odd one, every dtype
PARITY = [
    (16, 512, 64, 16, "bfloat16"),
    (20, 256, 32, 13, "float16"),
    pytest.param(3, 256, 32, 1, "float32", marks=pytest.mark.slow),
    pytest.param(40, 128, 64, 64, "bfloat16", marks=pytest.mark.slow),  # two head tiles
]


@pytest.mark.parametrize("heads,rank,rope,block_size,dtype", PARITY)
def test_parity(heads, rank, rope, block_size, dtype, device):
    b = make_mla_batch(LENS, num_heads=heads, rank=rank, rope=rope, block_size=block_size, dtype=dtype,
                       seed=heads, loud_future=True, device=device)
    check(b)


def test_vllm_single_cache_slices_and_strided_queries(device):
    """vLLM's one ``[num_blocks, block_size, R + P]`` cache passed as its two slices (no copy), and q_nope/q_pe
    views of one wider ``[T, H, R + P]`` query buffer."""
    b = make_mla_batch(LENS, num_heads=16, rank=256, rope=32, block_size=16, layout="fused", seed=5,
                       loud_future=True, device=device)
    assert b.kv_c_cache.untyped_storage().data_ptr() == b.k_pe_cache.untyped_storage().data_ptr()
    assert b.kv_c_cache.stride(1) == 288
    q = torch.cat([b.q_nope, b.q_pe], dim=-1)
    b.q_nope, b.q_pe = q[..., :256], q[..., 256:]
    check(b)


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_fp8_cache_with_one_scale(dtype, device):
    b = make_mla_batch(LENS, num_heads=16, rank=256, rope=32, block_size=16, dtype=dtype,
                       kv_dtype="float8_e4m3fn", kv_scale=0.07, seed=6, loud_future=True, device=device)
    check(b)
    b.kwargs["kv_scale"] = torch.tensor([0.07], device=device)  # a device tensor: the kernel reads it
    check(b)


# the split paths merge partials per (token, head, 32 columns) program: under the interpreter each costs ~15 ms,
# so the default tier splits small batches of 4 heads at R 128 and the slow tier the wide ones
@pytest.mark.parametrize("q_lens,heads,rank,splits", [
    ([1, 2, 2, 0, 8], 4, 128, None),
    ([2, 2, 2, 0, 2], 2, 128, 3),
    pytest.param([1, 2, 2, 0, 8], 16, 512, 3, marks=pytest.mark.slow),
], ids=["mixed", "q2-split", "mixed-r512-split"])
def test_multi_token_prediction_is_causal_among_the_queries(q_lens, heads, rank, splits, device):
    """1 to 8 queries per sequence; the newest key is loud, heard only by each sequence's last query."""
    b = make_mla_batch([3, 40, 2, 0, 70], q_lens, num_heads=heads, rank=rank, rope=32, block_size=16, seed=7,
                       loud_future=True, device=device)
    check(b, num_splits=splits)


@pytest.mark.parametrize("heads,rank,split", [(4, 128, dict(num_splits=2)),
                                              pytest.param(16, 256, dict(num_splits=5), marks=pytest.mark.slow),
                                              pytest.param(16, 256, dict(split_size=64), marks=pytest.mark.slow)])
def test_any_num_splits_equals_the_reference(heads, rank, split, device):
    b = make_mla_batch([0, 300, 45], num_heads=heads, rank=rank, rope=32, block_size=16, seed=8, loud_future=True,
                       device=device)
    check(b, **split)


@pytest.mark.meta_unsupported("the test reads which outputs are NaN: a meta tensor has no values")
def test_nan_in_a_future_key_reaches_only_the_queries_that_see_it(device):
    """Multi-token: the newest key's c is NaN: only the last query of that sequence reads it (0 * NaN in
    ``P c`` would reach its earlier queries too); a NaN in an earlier key's k_pe poisons every query."""
    b = make_mla_batch([20, 30], [3, 2], num_heads=16, rank=256, rope=32, block_size=8, dtype="float32", seed=9,
                       device=device)
    bt = b.block_table.cpu()
    b.kv_c_cache[bt[0, 19 // 8], 19 % 8, 5] = float("nan")  # sequence 0's newest key (position 19)
    b.k_pe_cache[bt[1, 0], 3, 0] = float("nan")  # sequence 1's key 3, seen by both its queries
    out, lse = T.mla_decode(*b.args(), **b.call_kwargs(), return_lse=True)
    ref_out, ref_lse = R.mla_decode(*b.args(), **b.call_kwargs(), return_lse=True)
    assert torch.isfinite(out[:2]).all() and torch.isfinite(lse[:2]).all()  # queries at 17, 18
    assert torch.isnan(out[2]).all() and torch.isnan(lse[2]).all()
    assert torch.isnan(out[3:]).all() and torch.isnan(lse[3:]).all()
    assert np.isnan(ref_out[2:]).all() and np.isfinite(ref_out[:2]).all()
    tol = mla_tolerance(b)
    assert_close(out, ref_out, atol=tol["out"], name="out")


@pytest.mark.slow  # 8 split calls and their merges under the interpreter
def test_batch_invariant_and_split_size_are_bitwise_independent_of_the_batch(device):
    """A sequence's rows, alone or among others (longer and shorter), are the same bits with
    ``batch_invariant=True`` and with a fixed ``split_size``: decode and multi-token."""
    for q_lens in (None, [2, 1, 3]):
        b = make_mla_batch([700, 5, 64], q_lens, num_heads=4, rank=128, rope=32, block_size=16, seed=10,
                           loud_future=True, device=device)
        one = make_mla_batch([700], None if q_lens is None else [2], num_heads=4, rank=128, rope=32,
                             block_size=16, seed=10, device=device)
        # sequence 0 of the batch, alone: its own table row, queries and the same caches
        rows = slice(0, 1 if q_lens is None else 2)
        one.q_nope, one.q_pe = b.q_nope[rows].clone(), b.q_pe[rows].clone()
        one.kv_c_cache, one.k_pe_cache, one.block_table = b.kv_c_cache, b.k_pe_cache, b.block_table[:1].clone()
        for mode in (dict(batch_invariant=True), dict(split_size=128)):
            whole = T.mla_decode(*b.args(), **b.call_kwargs(), **mode, return_lse=True)
            alone = T.mla_decode(*one.args(), **one.call_kwargs(), **mode, return_lse=True)
            assert torch.isfinite(whole[0][rows]).all() and whole[0][rows].abs().max() > 0
            assert_bitwise_equal(whole[0][rows], alone[0], name="out")
            assert_bitwise_equal(whole[1][rows], alone[1], name="lse")


# ---------------------------------------------------------------------------- every argument must matter

def _judge_check_case(case, fn):
    spec = get("mla_decode")
    inputs = spec.build(spec.check[case], "cpu", seed=1)
    return judge(spec, fn, inputs, expected=expected_outputs(spec, inputs))


@pytest.mark.parametrize("case,broken", [
    ("deepseek-v3/mla-decode-ragged", "q_pe"),
    ("deepseek-v3/mla-decode-ragged", "scale"),
    ("deepseek-v3/mla-decode-fp8-cache", "kv_scale"),
    ("deepseek-v3/mla-decode-mtp-q2", "causal"),
], ids=lambda x: x.split("/")[-1])
@pytest.mark.meta_unsupported("the verdict compares output values: a meta tensor has none")
@pytest.mark.servekernels  # wraps this project's kernel
@pytest.mark.slow  # two judged check cases each
def test_a_kernel_that_ignores_an_argument_fails_the_check_case(case, broken, device):
    """The kernel passes the check case; the same kernel ignoring q_pe (zeros), given the un-absorbed latent's
    own ``(R + P) ** -0.5`` for ``scale``, ignoring ``kv_scale`` or the queries' causality (every query sees
    every key) fails it."""
    kernel = T.mla_decode

    def wrong(q_nope, q_pe, *args, **kw):
        if broken == "q_pe":
            q_pe = torch.zeros_like(q_pe)
        if broken == "scale":
            kw["scale"] = (q_nope.shape[-1] + q_pe.shape[-1]) ** -0.5
        if broken == "kv_scale":
            kw.pop("kv_scale")
        if broken == "causal":  # each query row as its own sequence at the newest position
            qsl = kw.pop("query_start_loc")
            reps = (qsl[1:] - qsl[:-1]).long()
            args = (*args[:2], args[2].repeat_interleave(reps, 0), args[3].repeat_interleave(reps, 0))
        return kernel(q_nope, q_pe, *args, **kw)

    assert all(v.ok for v in _judge_check_case(case, kernel))
    assert not all(v.ok for v in _judge_check_case(case, wrong))


# ------------------------------------------------------------------------- bad input: a ValueError naming it

def _args(b, **changes):
    names = ("q_nope", "q_pe", "kv_c_cache", "k_pe_cache", "block_table", "seq_lens")
    return {**dict(zip(names, b.args())), **b.call_kwargs(), **changes}


BAD = [
    ("q_pe", lambda ok, fp8, mtp: _args(ok, q_pe=ok.q_pe[:, :3])),  # heads differ
    ("kv_c_cache", lambda ok, fp8, mtp: _args(ok, kv_c_cache=ok.kv_c_cache[..., :128])),  # rank differs
    ("k_pe_cache", lambda ok, fp8, mtp: _args(ok, k_pe_cache=ok.k_pe_cache[..., :16])),
    ("k_pe_cache", lambda ok, fp8, mtp: _args(ok, k_pe_cache=ok.k_pe_cache[:, :8])),  # block size differs
    ("q_nope", lambda ok, fp8, mtp: _args(ok, q_nope=ok.q_nope.new_zeros(2, 4, 72),
                                          kv_c_cache=ok.kv_c_cache.new_zeros(ok.kv_c_cache.shape[0], 16, 72))),
    ("q_nope", lambda ok, fp8, mtp: _args(ok, q_nope=ok.q_nope[:1], q_pe=ok.q_pe[:1])),  # one query, 2 sequences
    ("q_pe", lambda ok, fp8, mtp: _args(ok, q_pe=ok.q_pe.float())),
    ("kv_c_cache", lambda ok, fp8, mtp: _args(ok, kv_c_cache=ok.kv_c_cache.float())),
    ("k_pe_cache", lambda ok, fp8, mtp: _args(fp8, k_pe_cache=fp8.k_pe_cache.to(torch.float16))),
    ("kv_c_cache", lambda ok, fp8, mtp: _args(ok, kv_c_cache=ok.kv_c_cache.transpose(1, 2).contiguous()
                                              .transpose(1, 2))),  # last dim not contiguous
    ("block_table", lambda ok, fp8, mtp: _args(ok, block_table=ok.block_table[:, :1])),
    ("block_table", lambda ok, fp8, mtp: _args(ok, block_table=ok.block_table.to("meta"))),
    ("seq_lens", lambda ok, fp8, mtp: _args(ok, seq_lens=ok.seq_lens.new_tensor([5, -1]))),
    ("scale", lambda ok, fp8, mtp: _args(ok, scale=None)),
    ("scale", lambda ok, fp8, mtp: _args(ok, scale=float("inf"))),
    ("kv_scale", lambda ok, fp8, mtp: _args(ok, kv_scale=0.5)),  # a scale on a bfloat16 cache
    ("kv_scale", lambda ok, fp8, mtp: _args(fp8, kv_scale=-1.0)),
    ("num_splits", lambda ok, fp8, mtp: _args(ok, num_splits=0)),
    ("num_splits", lambda ok, fp8, mtp: _args(ok, num_splits=2, split_size=16)),
    ("query_start_loc", lambda ok, fp8, mtp: _args(mtp, query_start_loc=mtp.query_start_loc[:-1])),
    ("query_start_loc", lambda ok, fp8, mtp: _args(mtp, query_start_loc=mtp.query_start_loc.new_tensor([0, 3, 12]),
                                                   q_nope=mtp.q_nope.new_zeros(12, 4, 256),
                                                   q_pe=mtp.q_pe.new_zeros(12, 4, 32))),  # 9 > 8 queries
    ("query_start_loc", lambda ok, fp8, mtp: _args(mtp, query_start_loc=mtp.query_start_loc.new_tensor([0, 6, 9]),
                                                   q_nope=mtp.q_nope.new_zeros(9, 4, 256),
                                                   q_pe=mtp.q_pe.new_zeros(9, 4, 32))),  # q_len 6 > seq_len 5
]


@pytest.mark.bad_input
@pytest.mark.parametrize("arg,build", BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_the_argument(arg, build, device):
    kw = dict(num_heads=4, rank=256, rope=32, block_size=16, device=device, seed=11)
    ok = make_mla_batch([5, 40], **kw)
    fp8 = make_mla_batch([5, 40], kv_dtype="float8_e4m3fn", kv_scale=0.5, **kw)
    mtp = make_mla_batch([5, 40], [3, 2], **kw)
    kwargs = build(ok, fp8, mtp)
    before = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        T.mla_decode(**kwargs)
    for k, v in before.items():
        assert_bitwise_equal(kwargs[k], v, name=k)


# -------------------------------------------------------------------------- this project's split plan

@pytest.mark.host_only("the split heuristic: arithmetic only")
@pytest.mark.servekernels  # about this project's kernel, not the contract
def test_split_plan_keeps_partials_within_the_traffic_budget():
    """The heuristic's partitions are long enough that their float32 partials add at most MLA_SPLIT_TRAFFIC
    to the latent bytes read (so the catalogue's H = 16 cases can meet counted / minimum <= 1.05), and it still
    splits a lone long sequence into several programs."""
    from kernels.triton.ops.mla_decode import MLA_SPLIT_TRAFFIC, mla_min_split, mla_split_plan, mla_tiles

    t = mla_tiles(16, 512, 64)
    min_len = mla_min_split(16, 512, 64, 2, t["BLOCK_N"])
    assert min_len % t["BLOCK_N"] == 0 and 2 * 16 * 512 * 4 <= MLA_SPLIT_TRAFFIC * min_len * 576 * 2
    plan = mla_split_plan(32768, 1, 1, num_sms=132, blocks_per_sm=3, tile=t["BLOCK_N"], min_len=min_len)
    assert plan.num_parts >= 16 and plan.part_len >= min_len
    assert mla_split_plan(4096, 64, 1, num_sms=132, blocks_per_sm=3, tile=32, min_len=min_len).num_parts == 3
    assert mla_split_plan(4096, 400, 1, num_sms=132, blocks_per_sm=3, tile=32, min_len=min_len).num_parts == 1
    assert mla_split_plan(1000, 1, 1, num_sms=132, blocks_per_sm=3, tile=32, min_len=min_len).num_parts == 1
    # tiles: every head in one program up to 32 rows; MTP rows are queries x heads
    assert (mla_tiles(16, 512, 64)["BLOCK_H"], mla_tiles(20, 256, 32)["BLOCK_H"]) == (16, 32)
    assert mla_tiles(16, 512, 64, 2)["BLOCK_M"] == 32 and mla_tiles(128, 512, 64)["BLOCK_H"] == 32


# -------------------------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
def test_gpu_cache_past_2_31_elements(device):
    """vLLM's single 576-wide cache past 2**31 elements: block ids times the block stride need 64 bits."""
    bs, width = 64, 576
    num_blocks = 2 ** 31 // (bs * width) + 16
    both = torch.zeros(num_blocks, bs, width, dtype=torch.bfloat16, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    blocks = torch.arange(num_blocks - 12, num_blocks, device=device)
    both[blocks] = torch.randn(12, bs, width, generator=gen, device=device, dtype=torch.bfloat16)
    both[: num_blocks - 12] = float("nan")  # what a 32-bit offset would wrap onto
    assert both.numel() > 2 ** 31
    c, kp = both[..., :512], both[..., 512:]
    q_nope = torch.randn(2, 16, 512, generator=gen, device=device, dtype=torch.bfloat16)
    q_pe = torch.randn(2, 16, 64, generator=gen, device=device, dtype=torch.bfloat16)
    table = torch.stack([blocks[:6], blocks[6:]]).to(torch.int32)
    seq_lens = torch.tensor([317, 6 * bs], dtype=torch.int32, device=device)
    out, lse = T.mla_decode(q_nope, q_pe, c, kp, table, seq_lens, scale=192 ** -0.5, return_lse=True)
    ref_out, ref_lse = R.mla_decode(q_nope, q_pe, c, kp, table, seq_lens, scale=192 ** -0.5, return_lse=True)
    assert torch.isfinite(out).all()
    assert_close(out, ref_out, atol=4 * 2 ** -8 * float(np.abs(ref_out).max()) + 1e-3, name="out")
    assert_close(lse, ref_lse, atol=0.05, name="lse")


# ------------------------------------------------- compiled for an H100 without one: no spill at any tile

@pytest.mark.host_only("compiles for sm_90 with Triton's bundled ptxas (no GPU needed): nothing launches")
@pytest.mark.servekernels  # about this project's kernel, not the contract
@pytest.mark.slow  # a ptxas compile per configuration (cached on disk after the first run)
def test_every_tile_configuration_compiles_for_sm90_without_spills():
    """The launches the catalogue does not make (the catalogue's own are compiled by
    test_compile_metrics.py): an fp8 cache at 32 rows (H = 64) and with several queries (16 and 32 rows)."""
    from kernels.ops.mla_decode import mla_case
    from kernels.ops.models import DEEPSEEK_V3_MLA
    from roofline.compile_metrics import case_launches, compile_launches
    from roofline.specs import get_spec

    cases = [mla_case("x", "fp8-h64", 64, 4096, 64, DEEPSEEK_V3_MLA, kv_dtype="float8_e4m3fn"),
             mla_case("x", "fp8-mtp2", 64, 4096, 16, DEEPSEEK_V3_MLA, q_len=2, kv_dtype="float8_e4m3fn"),
             mla_case("x", "fp8-mtp1-h16", 1, 32768, 16, DEEPSEEK_V3_MLA, q_len=1, kv_dtype="float8_e4m3fn"),
             mla_case("x", "bf16-mtp8", 8, 4096, 16, DEEPSEEK_V3_MLA, q_len=8)]
    launches = [launch for c in cases for launch in case_launches(c, get_spec("h100-sxm"))
                if launch["kernel"] == "_mla_decode_kernel"]
    assert {launch["constexprs"]["BLOCK_M"] for launch in launches} == {16, 32}
    for launch, metrics in zip(launches, compile_launches(launches, 90)):
        assert "error" not in metrics or metrics["error"] is None, metrics
        assert metrics["spill_stores"] == 0 and metrics["spill_loads"] == 0, (launch["constexprs"], metrics)


@pytest.mark.host_only("the vLLM adapter's layout join: views and copies only, vLLM not loaded")
def test_vllm_adapter_joins_the_single_cache_without_a_copy():
    """vLLM's kernel reads ``[c, k_pe]`` as one row: the two slices of one ``[..., R + P]`` cache are passed as
    that tensor (no copy, as vLLM's own cache); separate caches are concatenated (a copy vLLM never makes)."""
    from kernels.impls.vllm.mla_decode import _joined

    fused = make_mla_batch([5, 40], num_heads=2, rank=32, rope=16, block_size=8, layout="fused", seed=12)
    joined = _joined(fused.kv_c_cache, fused.k_pe_cache)
    assert joined.data_ptr() == fused.kv_c_cache.data_ptr() and joined.shape[-1] == 48
    assert torch.equal(joined[..., 32:].nan_to_num(), fused.k_pe_cache.nan_to_num())
    apart = make_mla_batch([5, 40], num_heads=2, rank=32, rope=16, block_size=8, seed=12)
    copied = _joined(apart.kv_c_cache, apart.k_pe_cache)
    assert copied.data_ptr() not in (apart.kv_c_cache.data_ptr(), apart.k_pe_cache.data_ptr())
    assert torch.equal(copied[..., :32].nan_to_num(), apart.kv_c_cache.nan_to_num())
