"""Triton write_kv against the reference, bit for bit.

The caches start as NaN everywhere, so a slot written that should not be (a skipped token, a wrong block) or a
slot not written that should be shows up as a byte difference. A copy, or one rounding onto the e4m3 grid, is
exact: the comparison is bitwise, not within a tolerance.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from kernels.testing.assertions import assert_bitwise_equal
from kernels.testing.paged import torch_dtype
from kernels import reference as R
from correctness.impl import T
from kernels.ops.write_kv import poisoned_caches, random_slots
from kernels.reference.fp8 import E4M3_MAX, round_to_e4m3, to_e4m3_tensor


def run_both(key, value, k_cache, v_cache, slots, **scales):
    """The kernel on the caches given, the reference on clones of them; returns both pairs."""
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    out = T.write_kv(key, value, k_cache, v_cache, slots, **scales)  # first: the meta run stops here
    R.write_kv(key, value, ref_k, ref_v, slots, **scales)
    assert out[0] is k_cache and out[1] is v_cache
    return (k_cache, v_cache), (ref_k, ref_v)


CASES = [
    # (key dtype, cache dtype, slot dtype, block_size, heads, head_dim, layout, k_scale, v_scale)
    ("float16", "float16", torch.int32, 16, 2, 128, "separate", 1.0, 1.0),
    ("bfloat16", "bfloat16", torch.int64, 7, 3, 80, "stacked", 1.0, 1.0),
    ("float32", "float32", torch.int32, 1, 1, 64, "interleaved", 1.0, 1.0),
    ("bfloat16", "float8_e4m3fn", torch.int64, 16, 2, 128, "separate", 0.37, 1.9),
    ("float16", "float8_e4m3fn", torch.int32, 5, 4, 96, "interleaved", 0.02, 3.0),
    ("float32", "float8_e4m3fn", torch.int64, 12, 1, 256, "stacked", 1.0, 0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}->{c[1]}-{str(c[2])[6:]}-bs{c[3]}-{c[6]}")
def test_write_kv_matches_reference(case, device):
    kd, cd, sd, bs, heads, d, layout, k_scale, v_scale = case
    gen = torch.Generator().manual_seed(bs * d)
    num_blocks, num_tokens = 9, 37
    k_cache, v_cache = poisoned_caches(num_blocks, bs, heads, d, torch_dtype(cd), layout, device)
    num_tokens = min(num_tokens, num_blocks * bs)
    # signed values; for fp8, spread over e4m3's whole range: subnormals, normals and past +-448 (saturation)
    spread = (torch.exp2(torch.randint(-14, 12, (num_tokens, heads, d), generator=gen).double())
              if cd == "float8_e4m3fn" else 1.0)
    key = (torch.randn((num_tokens, heads, d), generator=gen, dtype=torch.float64) * spread).to(device, torch_dtype(kd))
    value = torch.randn((num_tokens, heads, d), generator=gen, dtype=torch.float64).to(device, torch_dtype(kd))
    slots = random_slots(num_tokens, num_blocks * bs, 5, sd, gen).to(device)
    scales = dict(k_scale=k_scale, v_scale=v_scale) if cd == "float8_e4m3fn" else {}
    (k, v), (rk, rv) = run_both(key, value, k_cache, v_cache, slots, **scales)
    assert_bitwise_equal(k, rk, name="k_cache")
    assert_bitwise_equal(v, rv, name="v_cache")
    # the test is not vacuous: the written slots hold finite values, the others still NaN
    written = slots[slots >= 0].long().cpu()
    flat_k = k.cpu().reshape(-1, heads, d)
    assert torch.isfinite(flat_k[written].float()).all()
    assert torch.isnan(flat_k.float()).sum() == (num_blocks * bs - written.numel()) * heads * d
    if cd == "float8_e4m3fn":
        assert (flat_k[written].float().abs() == E4M3_MAX).any(), "no value saturated: widen the spread"


def test_fp8_every_float16_value_rounds_like_the_reference(device):
    """Every finite float16 (subnormals, ties, values past 448) over two scales: bitwise the reference's RNE."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    bits = bits[torch.isfinite(bits)]
    n = bits.numel() // 64 * 64
    key = bits[:n].reshape(-1, 2, 32).to(device)
    slots = torch.arange(key.shape[0], dtype=torch.int64, device=device).flip(0)
    for scale in (1.0, 0.37):
        k_cache, v_cache = poisoned_caches(key.shape[0] // 4, 4, 2, 32, torch.float8_e4m3fn, "separate", device)
        (k, _), (rk, _) = run_both(key, key, k_cache, v_cache, slots, k_scale=scale, v_scale=scale)
        assert_bitwise_equal(k, rk, name=f"k_cache, scale {scale}")


def test_fp8_saturation_and_ties_to_even(device):
    """Hand-picked values with known answers (not only agreement with the reference)."""
    cases = {  # x -> e4m3 value
        1.0625: 1.0, 1.1875: 1.25, -1.0625: -1.0, 2.0 ** -10: 0.0, 3 * 2.0 ** -10: 2.0 ** -8,
        5 * 2.0 ** -10: 2.0 ** -8, 15 * 2.0 ** -10: 2.0 ** -6, 464.0: 448.0, 480.0: 448.0, 1e4: 448.0,
        -65504.0: -448.0, 240.0: 240.0, 248.0: 256.0, 0.0: 0.0,
    }
    x = torch.tensor(list(cases), dtype=torch.float32)
    key = x.repeat(32, 1).T.reshape(len(cases), 1, 32).contiguous().to(device)
    k_cache, v_cache = poisoned_caches(len(cases), 1, 1, 32, torch.float8_e4m3fn, "separate", device)
    T.write_kv(key, key, k_cache, v_cache, torch.arange(len(cases), device=device))
    got = k_cache[:, 0, 0, 0].cpu().double().numpy()
    np.testing.assert_array_equal(got, np.array(list(cases.values())))
    np.testing.assert_array_equal(round_to_e4m3(np.array(list(cases))), np.array(list(cases.values())))
    assert_bitwise_equal(k_cache[:, 0, 0].cpu(), to_e4m3_tensor(key[:, 0].cpu().double().numpy()))


@pytest.mark.bad_input
def test_bad_slot_raises_before_anything_is_written(device):
    """One slot past the cache at the end of the mapping: ValueError, and the cache is byte-for-byte unchanged."""
    k_cache, v_cache = poisoned_caches(4, 8, 2, 64, torch.float16, "separate", device)
    k_cache[1].fill_(3.0)
    before = (k_cache.clone(), v_cache.clone())
    key = torch.randn(5, 2, 64).to(device, torch.float16)
    slots = torch.tensor([0, 1, 2, 3, 32], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="slot_mapping"):
        T.write_kv(key, key, k_cache, v_cache, slots)
    assert_bitwise_equal(k_cache, before[0], name="k_cache")
    assert_bitwise_equal(v_cache, before[1], name="v_cache")


@pytest.mark.bad_input
@pytest.mark.meta_unsupported("the reference checks values on the host: a meta tensor has none", ids=("reference",))
@pytest.mark.parametrize("impl", [R, T], ids=["reference", "triton"])
@pytest.mark.parametrize("name", ["k_scale", "v_scale"])
def test_scale_on_a_non_fp8_cache_is_refused(impl, name, device):
    """A scale other than 1.0 with a float16 cache: ValueError naming it, the cache unchanged."""
    k_cache, v_cache = poisoned_caches(4, 8, 2, 64, torch.float16, "separate", device)
    before = k_cache.clone()
    key = torch.randn(3, 2, 64).to(device, torch.float16)
    with pytest.raises(ValueError, match=name):
        impl.write_kv(key, key, k_cache, v_cache, torch.arange(3, device=device), **{name: 0.5})
    assert_bitwise_equal(k_cache, before, name="k_cache")


def test_no_tokens_and_all_skipped(device):
    k_cache, v_cache = poisoned_caches(2, 4, 1, 32, torch.bfloat16, "separate", device)
    before = k_cache.clone()
    T.write_kv(torch.empty(0, 1, 32, dtype=torch.bfloat16, device=device),
               torch.empty(0, 1, 32, dtype=torch.bfloat16, device=device), k_cache, v_cache,
               torch.empty(0, dtype=torch.int64, device=device))
    key = torch.randn(3, 1, 32).to(device, torch.bfloat16)
    T.write_kv(key, key, k_cache, v_cache, torch.tensor([-1, -5, -1], device=device))
    assert_bitwise_equal(k_cache, before)


@pytest.mark.host_only("a name lookup")
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_public_name_is_the_function_after_its_module_is_imported():
    """``kernels.triton.write_kv`` stays the launcher even once its module has been imported explicitly."""
    import kernels.triton.ops.write_kv  # noqa: F401

    assert callable(T.write_kv) and T.write_kv.__name__ == "write_kv"


def compile_write_kv_configs() -> None:
    from correctness.sm90 import compile_sm90
    from kernels.triton.ops.write_kv import _write_kv_kernel, launch_arguments

    for kd, cd, sd, bs, heads, d, layout, k_scale, v_scale in CASES:
        k_cache, v_cache = poisoned_caches(4, bs, heads, d, torch_dtype(cd), layout, "cpu")
        key = torch.zeros((8, heads, d), dtype=torch_dtype(kd))
        _, args, meta = launch_arguments(key, key, k_cache, v_cache, torch.zeros(8, dtype=sd), k_scale, v_scale)
        kernel = compile_sm90(_write_kv_kernel, args, meta)
        print("compiled", kd, cd, "cubin bytes", len(kernel.asm["cubin"]), flush=True)


@pytest.mark.host_only("compiles for sm_90 in a child process (ptxas, no GPU needed): nothing launches")
@pytest.mark.slow
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_write_kv_compiles_for_h100():
    """The launcher's own arguments compiled for sm_90 (no GPU needed): see correctness/sm90.py."""
    from correctness.sm90 import run_compile_child

    run_compile_child("correctness.test_write_kv")


if __name__ == "__main__" and sys.argv[1:] == ["--compile-sm90"]:
    compile_write_kv_configs()
