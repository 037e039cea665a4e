"""The GEMM and MoE references, their tolerances and the full-size builders work one expert at a time.

A full-size report case (a Mixtral w13 stack is 8 x 28672 x 4096: 7.5 GB as float64) must fit a host and stay
fast: the references and bounds dequantize only the experts that have rows, each once, and the builders
quantize one expert at a time on the target device. These tests pin both properties and prove that doing so
changes no value: the per-expert results equal the whole-stack ones (bitwise for quantization, to float64
rounding for the GEMMs), and an expert without rows is never dequantized at all.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import reference as R
from kernels.reference import gemm as RG
from kernels.reference import moe as RM
from kernels.reference import quant as RQ
from kernels.testing.assertions import assert_bitwise_equal
from kernels.testing.gemm import quantize_on_device
from kernels.testing.moe_inputs import make_grouped_gemm_inputs
from kernels.triton import quant as Q

SIZES = [5, 0, 1, 0, 9]  # experts 1 and 3 have no row


def _counting(monkeypatch, module):
    """Replace ``module.dequantized_expert`` by a wrapper that records which experts it was asked for."""
    asked = []
    real = RQ.dequantized_expert

    def spy(w, e):
        asked.append(int(e))
        return real(w, e)

    monkeypatch.setattr(module, "dequantized_expert", spy)
    return asked


def _weights(kind, w):
    if kind == "int4":
        return RQ.quantize_int4(w, group_size=32, zero_point=True)
    if kind == "fp8":
        return RQ.quantize_fp8(w, "block", (128, 128))
    return w.to(torch.bfloat16)


def _whole_stack(kind, q):
    return {"int4": RQ.dequantize_int4, "fp8": RQ.dequantize_fp8}.get(kind, RM.f64)(q)


@pytest.mark.host_only("the float64 references on host tensors; no kernel")
@pytest.mark.parametrize("kind", ["dense", "int4", "fp8"])
def test_grouped_gemm_reference_dequantizes_each_expert_with_rows_once(kind, monkeypatch):
    inp = make_grouped_gemm_inputs(sum(SIZES), len(SIZES), 40, 256, "bfloat16", seed=1, sizes=SIZES)
    q = _weights(kind, inp.w)
    whole = _whole_stack(kind, q)
    offs = inp.group_offsets.cpu().numpy()
    if kind == "fp8":
        a8, s8 = RQ.quantize_fp8_act(inp.a.float(), 128)
        args = (a8, s8, q, inp.group_offsets)
        a64 = RM.f64(a8) * np.repeat(RM.f64(s8), 128, axis=1)
        fn = RG.grouped_gemm_fp8
    else:
        args = (inp.a, q, inp.group_offsets)
        a64 = RM.f64(inp.a)
        fn = RG.grouped_gemm_int4 if kind == "int4" else RG.grouped_gemm
    asked = _counting(monkeypatch, RG)
    y = fn(*args)
    assert asked == [0, 2, 4]  # the experts with rows, once each; 1 and 3 never
    expected = np.zeros_like(y)
    for e in range(len(SIZES)):
        expected[offs[e]:offs[e + 1]] = a64[offs[e]:offs[e + 1]] @ whole[e].T
    assert np.abs(y).max() > 0.1  # not vacuous
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13 * np.abs(expected).max())


@pytest.mark.host_only("the float64 reference and bound on host tensors; no kernel")
@pytest.mark.parametrize("kind", ["dense", "int4", "fp8"])
def test_fused_moe_reference_and_bound_read_only_routed_experts(kind, monkeypatch):
    from kernels.testing.moe import make_moe, moe_error_bound

    x, w13, w2, ids, wts = make_moe(12, 256, 128, 6, 2, "bfloat16", kind, seed=2)
    routed = sorted(set(ids.flatten().tolist()))
    assert len(routed) < 6  # make_moe leaves an expert unrouted (its weights NaN)
    asked = _counting(monkeypatch, RM)
    ref = R.fused_moe(x, w13, w2, ids, wts)
    assert sorted(asked) == sorted(routed * 2) and len(asked) == 2 * len(routed)  # w13 and w2 of each, once
    assert np.isfinite(ref).all() and np.abs(ref).max() > 1e-3
    # the per-token definition, on whole-stack float64 weights, equals the per-expert evaluation
    w13d, w2d = _whole_stack(kind, w13), _whole_stack(kind, w2)
    xs, w64, ids_np = RM.f64(x), RM.f64(wts), ids.numpy()
    one = np.zeros_like(ref)
    for t in range(xs.shape[0]):
        for j in range(ids_np.shape[1]):
            e = ids_np[t, j]
            one[t] += w64[t, j] * RM.expert_mlp(xs[t:t + 1], w13d[e], w2d[e], fp8=kind == "fp8")[0][0]
    np.testing.assert_allclose(ref, one, rtol=1e-12, atol=1e-12 * np.abs(one).max())
    import kernels.testing.moe as TM  # the bound takes the same per-expert helper, imported there by name

    asked = _counting(monkeypatch, TM)
    bound = moe_error_bound(x, w13, w2, ids, wts, ref, kind)
    assert sorted(asked) == sorted(routed * 2)
    assert np.isfinite(bound).all() and (bound > 0).all()


@pytest.mark.meta_unsupported("compares the values it built on the device: a meta tensor has none")
@pytest.mark.parametrize("kind", ["int4", "fp8"])
def test_builders_quantize_per_expert_on_the_device_bitwise_as_the_reference(kind, device):
    """``quantize_on_device`` (one expert at a time, kernels.triton.quant, on the device) gives exactly the
    reference quantizer's stack: the builders' speed-up changes no input."""
    w = make_grouped_gemm_inputs(4, 3, 40, 256, "bfloat16", seed=3).w
    if kind == "int4":
        got = quantize_on_device(w, device, lambda w_e, **kw: Q.quantize_int4(w_e, 64, True, **kw))
        want = RQ.quantize_int4(w, group_size=64, zero_point=True)
        fields = ("qweight", "scales", "zeros")
    else:
        got = quantize_on_device(w, device, lambda w_e, **kw: Q.quantize_fp8(w_e, "block", (128, 128), **kw))
        want = RQ.quantize_fp8(w, "block", (128, 128))
        fields = ("data", "scales")
    for name in fields:
        g = getattr(got, name)
        assert g.device.type == torch.device(device).type and g.shape[0] == 3
        assert_bitwise_equal(g.cpu(), getattr(want, name), name=name)


@pytest.mark.meta_unsupported("compares the values it built on the device: a meta tensor has none")
def test_master_weights_past_the_threshold_are_drawn_on_the_device_like_signed_weights(monkeypatch, device):
    """Above ``DEVICE_RNG_MIN_ELEMENTS`` the stack is drawn by torch on the device: reproducible from the seed,
    the same distribution as ``signed_weights`` (std ~ K**-0.5 times the row gains, three outlier columns per
    expert at WEIGHT_OUTLIER_GAIN), and below it the numpy values are unchanged."""
    from kernels.testing import moe_inputs as MI

    e, n, k = 3, 512, 256
    small = MI.master_weights(e, n, k, np.random.default_rng(7), device)
    assert_bitwise_equal(small.cpu(), torch.from_numpy(MI.signed_weights(e, n, k, np.random.default_rng(7))).float(),
                         name="w")  # under the threshold: numpy's values
    monkeypatch.setattr(MI, "DEVICE_RNG_MIN_ELEMENTS", e * n * k - 1)
    w = MI.master_weights(e, n, k, np.random.default_rng(7), device)
    assert w.device.type == torch.device(device).type and w.dtype == torch.float32
    assert torch.equal(w, MI.master_weights(e, n, k, np.random.default_rng(7), device))  # seeded
    assert not torch.equal(w, MI.master_weights(e, n, k, np.random.default_rng(8), device))
    assert not torch.equal(w.cpu(), small.cpu())  # it really took the device path
    ref = MI.signed_weights(e, n, k, np.random.default_rng(7))
    for x in (w.cpu().double().numpy(), ref):
        col_rms = np.sqrt((x ** 2).mean(axis=1))  # [E, K]: outlier columns stand out by the gain
        loud = (col_rms > 2 * np.median(col_rms, axis=1, keepdims=True)).sum(axis=1)
        assert loud.tolist() == [3] * e
        quiet = np.sort(col_rms, axis=1)[:, :-3]
        np.testing.assert_allclose(quiet.mean(), k ** -0.5 * np.sqrt((0.5 ** 2 + 0.5 * 2 + 2 ** 2) / 3), rtol=0.05)
