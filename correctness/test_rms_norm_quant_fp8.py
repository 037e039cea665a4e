"""``rms_norm_quant_fp8`` against the float64 reference (``quantize_fp8_act`` of the norm rounded to float32), and,
for this project's kernel, the contract's identity: the same bits as ``quantize_fp8_act`` of our float32
``rms_norm``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T
from kernels import reference as R
from kernels.testing.assertions import assert_bitwise_equal, assert_close
from kernels.testing.norms import e4m3_step, norm_rows, norm_weight, padded, scale_atol


def inputs(t, h, dtype, layout="padded", seed=0, device="cpu"):
    rng = np.random.default_rng(seed)
    return padded(norm_rows(t, h, rng), dtype, device, layout), norm_weight(h, rng, 0.0, dtype, device)


CASES = [  # (T, H, dtype, group_size, layout)
    pytest.param((70, 512, "bfloat16", 128, "padded"), marks=pytest.mark.slow),  # two programs
    (9, 512, "bfloat16", 128, "padded"),
    (5, 300, "float16", 64, "contiguous"),  # a short last group
    (6, 300, "float32", 1024, "padded"),  # one scale per token, H not a power of two
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"t{c[0]}-h{c[1]}-{c[2]}-g{c[3]}-{c[4]}")
def test_rms_norm_quant_fp8_matches_the_reference(case, device):
    t, h, dtype, g, layout = case
    x, w = inputs(t, h, dtype, layout, seed=t, device=device)
    out, scales = T.rms_norm_quant_fp8(x, w, eps=1e-6, group_size=g)
    ref_out, ref_scales = R.rms_norm_quant_fp8(x, w, eps=1e-6, group_size=g)
    assert out.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert tuple(scales.shape) == (t, -(-h // min(g, h)))
    assert_close(scales, ref_scales, atol=scale_atol(ref_scales, h), name="scales")
    assert_close(out, ref_out, atol=e4m3_step(ref_out), name="out")
    # most values land on the reference's own grid point: a one-step budget is not a licence
    assert (out.cpu().float() == ref_out.float()).float().mean() > 0.97
    assert (out.cpu().float().abs() == 448).any(), "every group's largest value maps to 448"


@pytest.mark.host_only("the float64 reference")
def test_reference_is_quantize_fp8_act_of_the_float32_norm():
    x, w = inputs(5, 256, "bfloat16", "contiguous", seed=2)
    q, s = R.rms_norm_quant_fp8(x, w, eps=1e-6, group_size=128)
    q2, s2 = R.quantize_fp8_act(R.rms_norm(x, w, eps=1e-6).astype(np.float32), 128)
    assert_bitwise_equal(q, q2, name="out")
    assert_bitwise_equal(s, s2, name="scales")


@pytest.mark.servekernels  # the contract's identity, for this project's kernels
@pytest.mark.meta_unsupported("compares two calls' values")
@pytest.mark.parametrize("g", [64, 4096])
def test_same_bits_as_quantize_fp8_act_of_our_float32_rms_norm(g, device):
    import kernels.triton as K

    x, w = inputs(9, 300, "bfloat16", "padded", seed=g, device=device)
    q, s = K.rms_norm_quant_fp8(x, w, eps=1e-6, group_size=g)
    q2, s2 = K.quantize_fp8_act(K.rms_norm(x.float(), w, eps=1e-6), g)
    assert_bitwise_equal(q, q2, name="out")
    assert_bitwise_equal(s, s2, name="scales")


@pytest.mark.bad_input
@pytest.mark.host_only("bad input is refused before any launch")
@pytest.mark.parametrize("impl", [R, T], ids=["reference", "triton"])
@pytest.mark.parametrize("arg, kw", [("group_size", {"group_size": 48}), ("group_size", {"group_size": 0}),
                                     ("eps", {"eps": -1.0})], ids=["group-48", "group-0", "eps-negative"])
def test_bad_input_raises_value_error_naming_the_argument(impl, arg, kw):
    x, w = inputs(4, 256, "bfloat16", "contiguous")
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        impl.rms_norm_quant_fp8(x, w, **{"eps": 1e-6, "group_size": 128, **kw})
