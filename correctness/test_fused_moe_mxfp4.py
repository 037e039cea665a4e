"""gpt-oss's MoE: MXFP4 expert stacks, float32 biases on both GEMMs and ``swiglu_oai`` (gate and up interleaved,
clamped at 7, ``gate * sigmoid(1.702 gate) * (up + 1)``), vs the float64 definition under the derived bound
(``kernels.testing.moe.moe_error_bound``) and its no-flip criterion; the activation's own properties; the biases on
the other weight formats; gpt-oss's router (softmax over the chosen logits) equal to the renormalised ``route``;
and the wrong modules (a dropped bias, gate/up de-interleaved the wrong way, a scale read past K) failing
``servekernels check``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T as K
from correctness.test_fused_moe import STRICT_ROW_FRACTION
from kernels import reference as R
from kernels.impls import load
from kernels.ops import get
from kernels.reference.moe import SWIGLU_OAI_ALPHA, swiglu_oai
from kernels.testing.assertions import assert_close
from kernels.testing.moe import make_moe, moe_biases, run_fused_moe
from servekernels.check import run_case, spec_case

OSS = "swiglu_oai"


def check_moe(x, w13, w2, ids, weights, kind: str, **kwargs):
    """The implementation vs the float64 definition: every element within the bound, and the no-flip bound met on
    all but ``STRICT_ROW_FRACTION`` of the rows against the reference with h rounded one allowed way."""
    out, ref, bound, strict = run_fused_moe(x, w13, w2, ids, weights, kind, fn=K.fused_moe, **kwargs)
    assert out.dtype == x.dtype and out.shape == x.shape
    got = out.detach().cpu().double().numpy()
    assert_close(got / bound, ref / bound, atol=1.0, name=f"fused_moe {kind} (in units of the bound)")
    over = min((np.abs(got - ref_h) > tol).any(axis=1).mean() for ref_h, tol in strict.values())
    assert over <= STRICT_ROW_FRACTION, f"{over:.0%} of the rows exceed the no-flip bound for every rounding of h"
    return got, ref


@pytest.mark.parametrize("t,h,i,e,k,dtype", [(9, 96, 160, 8, 4, "bfloat16"), (2, 64, 96, 32, 4, "float16"),
                                             pytest.param(30, 64, 32, 4, 2, "bfloat16", marks=pytest.mark.slow)])
def test_mxfp4_swiglu_oai_with_biases(t, h, i, e, k, dtype, device):
    """Skewed routing (hot, empty and one-row experts; unused experts' scales 255 and biases NaN), the scales in a
    255-padded buffer, H and I off every tile."""
    x, w13, w2, ids, wts = make_moe(t, h, i, e, k, dtype, "mxfp4", seed=t + e, device=device)
    b13, b2 = moe_biases(e, h, i, ids, seed=t, device=device)
    got, ref = check_moe(x, w13, w2, ids, wts, "mxfp4", activation=OSS, w13_bias=b13, w2_bias=b2)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.1


@pytest.mark.slow
def test_mxfp4_silu_without_biases(device):
    x, w13, w2, ids, wts = make_moe(12, 64, 96, 6, 2, "bfloat16", "mxfp4", seed=3, device=device)
    check_moe(x, w13, w2, ids, wts, "mxfp4")


@pytest.mark.parametrize("kind", ["dense", pytest.param("int4", marks=pytest.mark.slow)])
def test_biases_and_swiglu_oai_on_other_formats(kind, device):
    """The biases and the activation are not MXFP4's own: a dense or int4 stack takes them too (the kernel adds
    the biases to its GEMMs' float32 results)."""
    x, w13, w2, ids, wts = make_moe(10, 64, 64, 5, 2, "bfloat16", kind, seed=4, device=device)
    b13, b2 = moe_biases(5, 64, 64, ids, seed=4, device=device)
    check_moe(x, w13, w2, ids, wts, kind, activation=OSS, w13_bias=b13, w2_bias=b2)


@pytest.mark.host_only("the float64 activation itself: no kernel")
def test_swiglu_oai_definition():
    """Gate from the even columns, up from the odd ones; gate clamped above at 7 only, up at +-7; NaN kept."""
    gu = np.array([[1.0, 2.0, 9.0, -9.0, -8.0, 0.5, np.nan, 0.0]])
    h = swiglu_oai(gu)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    expected = [1.0 * sig(1.702) * 3.0, 7.0 * sig(7 * 1.702) * (-6.0), -8.0 * sig(-8 * 1.702) * 1.5]
    np.testing.assert_allclose(h[0, :3], expected, rtol=1e-9)  # the tails of two sigmoid formulas
    assert np.isnan(h[0, 3])
    assert SWIGLU_OAI_ALPHA == 1.702


@pytest.mark.host_only("the float64 reference: no kernel")
def test_clamps_act_on_the_check_inputs():
    """The gpt-oss check cases' w13 bias is wide enough that some gate values pass 7 and some up values pass
    +-7 (so an implementation without the clamps fails them)."""
    spec = get("fused_moe")
    inp = spec.build(spec.check["gpt-oss-20b-like/moe-mxfp4-swiglu-oai"])
    x, w13, w2, ids, _ = inp.args
    b13 = inp.kwargs["w13_bias"].double().numpy()
    gates, ups = [], []
    for e in np.unique(ids.numpy()):
        tok = np.nonzero((ids.numpy() == e).any(axis=1))[0]
        gu = x.double().numpy()[tok] @ R.dequantize_mxfp4(w13)[e].T + b13[e]
        gates.append(gu[:, 0::2].ravel())
        ups.append(gu[:, 1::2].ravel())
    gate, up = np.concatenate(gates), np.concatenate(ups)
    assert (gate > 7).sum() >= 3 and (np.abs(up) > 7).sum() >= 3


@pytest.mark.host_only("the float64 routers: no kernel")
@pytest.mark.parametrize("experts", [32, 128])
def test_gpt_oss_router_is_the_renormalised_route(experts):
    """gpt-oss routes with top-4 of the logits, then a softmax over those 4 logits: the same ids and weights as
    the contract's renormalised ``route`` (softmax over all E, renormalised over the k chosen)."""
    logits = np.random.default_rng(experts).standard_normal((64, experts)) * 3
    ids, weights = R.route(logits, 4, renormalize=True)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :4]
    chosen = np.take_along_axis(logits, top, axis=1)
    softmax_chosen = np.exp(chosen - chosen.max(axis=1, keepdims=True))
    softmax_chosen /= softmax_chosen.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(ids, top)
    np.testing.assert_allclose(weights, softmax_chosen, rtol=1e-12)


@pytest.mark.bad_input
def test_bad_biases_and_activation(device):
    x, w13, w2, ids, wts = make_moe(4, 64, 32, 3, 2, "bfloat16", "mxfp4", seed=1, device=device)
    b13, b2 = moe_biases(3, 64, 32, ids, device=device)
    bad = [({"w13_bias": b13[:, :10], "w2_bias": b2}, "w13_bias"), ({"w13_bias": b13, "w2_bias": b2.double()}, "w2_bias"),
           ({"w2_bias": b2[:2]}, "w2_bias"), ({"activation": "gelu"}, "activation")]
    for kwargs, name in bad:
        for fn in (K.fused_moe, R.fused_moe):
            with pytest.raises(ValueError, match=name):
                fn(x, w13, w2, ids, wts, **kwargs)


# --------------------------------------------------------------------------------- wrong modules fail check

WRONG = {  # module -> the check cases it must fail (the first in the default tier, the others slow)
    "mxfp4_ignores_bias": [("grouped_gemm_mxfp4", "gpt-oss-like/grouped-gemm-mxfp4-k32-n258-fp16"),
                           ("fused_moe", "gpt-oss-20b-like/moe-mxfp4-swiglu-oai")],
    "swiglu_halves": [("fused_moe", "gpt-oss-120b-like/moe-mxfp4-decode"),
                      ("fused_moe", "gpt-oss-20b-like/moe-mxfp4-swiglu-oai")],
    "mxfp4_scale_past_k": [("grouped_gemm_mxfp4", "gpt-oss-like/grouped-gemm-mxfp4-k32-n258-fp16"),
                           ("grouped_gemm_mxfp4", "gpt-oss-120b-like/grouped-gemm-mxfp4-k2880")],
}
WRONG_PARAMS = [pytest.param(m, op, c, marks=[pytest.mark.slow] if j else []) for m, pairs in WRONG.items()
                for j, (op, c) in enumerate(pairs)]


def _check(module: str, op: str, case: str):
    spec = get(op)
    return run_case(spec_case(spec, case, spec.check[case], load("correctness.wrong_impls." + module)))


@pytest.mark.host_only("the wrong modules are eager torch on the host; check builds its own inputs")
@pytest.mark.parametrize("module, op, case", WRONG_PARAMS)
def test_check_fails_a_wrong_module(module, op, case):
    results = _check(module, op, case)
    assert results and any(not r.ok for r in results), \
        f"{module} passed {case}: {[(r.op, r.max_abs_err, r.atol) for r in results]}"


@pytest.mark.slow
@pytest.mark.host_only("the eager float32 baseline on the host; check builds its own inputs")
@pytest.mark.parametrize("op, case", sorted({pair for pairs in WRONG.values() for pair in pairs}))
def test_check_passes_the_float32_baseline(op, case):
    """The same cases pass a right implementation (the float32 eager baseline): the failures above are the bugs'."""
    spec = get(op)
    results = run_case(spec_case(spec, case, spec.check[case], load("torch")))
    assert results and all(r.ok and not r.status for r in results), [(r.op, r.detail[:200]) for r in results]
