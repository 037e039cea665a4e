"""route: softmax or sigmoid scores, top-k (ties to the lower expert id), optional renormalisation; DeepSeek's
selection bias, group-limited top-k (ties to the lower group id) and scaling factor."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.testing.assertions import assert_bitwise_equal, assert_close
from kernels.testing.paged import torch_dtype
from kernels.testing.moe_inputs import skewed_router_logits
from kernels.testing.routing import _conflicts, router_inputs, score_margin
from kernels.testing.routing import weights_atol as routed_weights_atol
from kernels.testing.tolerances import unit_roundoff
from kernels import reference as R
from correctness.impl import T as K


def weights_atol(num_experts: int) -> float:
    """Weights are <= 1. Each exp is off by ~|x| * 2**-24 relative (argument rounding; GPU ex2.approx adds
    2**-22), i.e. p * |ln p| <= 1/e absolute; the float32 sum over E terms adds E * 2**-24 relative, the
    division one more. Budget: (2E + 16) float32 units."""
    return (2 * num_experts + 16) * unit_roundoff("float32")


def check_route(logits, top_k, renormalize, device="cpu", **router):
    """Kernel on ``device`` vs reference (``router``: DeepSeek's keywords; a ``correction_bias`` on the CPU);
    returns the kernel's (ids, weights) on the CPU."""
    on_device = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in router.items()}
    ids, weights = K.route(logits.to(device), top_k, renormalize=renormalize, **on_device)
    ids, weights = ids.cpu(), weights.cpu()
    ref_ids, ref_weights = R.route(logits, top_k, renormalize=renormalize, **router)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert_bitwise_equal(ids, torch.from_numpy(ref_ids), name="topk_ids")
    if logits.shape[0]:
        atol = (routed_weights_atol(logits.shape[1], top_k, router.get("scoring", "softmax"),
                                    router.get("routed_scaling_factor", 1.0)) if router
                else weights_atol(logits.shape[1]))
        assert_close(weights, ref_weights, atol=atol, name="topk_weights")
    return ids, weights


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(37, 8, 2), (5, 60, 6), (3, 1, 1), (19, 64, 8)])
def test_route_matches_reference(dtype, renormalize, num_tokens, num_experts, top_k, device):
    logits = (torch.randn(num_tokens, num_experts) * 2).to(torch_dtype(dtype))
    check_route(logits, top_k, renormalize, device)


def test_deepseek_sized_router(device):
    """E = 256, k = 8 (DeepSeek-V3's expert count): one 256-wide tile per token."""
    logits = torch.from_numpy(skewed_router_logits(45, 256, np.random.default_rng(3))).float()
    check_route(logits, 8, True, device)


def test_ties_go_to_the_lower_expert_id(device):
    e, k = 16, 4
    logits = torch.randn(6, e)
    logits[0] = 0.5  # all equal: 0, 1, 2, 3
    logits[1, [9, 3, 12]] = 7.0  # a three-way tie at the top, then the rest
    logits[2, :] = -1.0
    logits[2, [15, 14]] = 2.0  # tie at the top in the highest ids
    logits[3] = -2.0
    logits[3, ::2] = 3.0  # eight-way tie: the four lowest even ids
    logits[4] = torch.tensor([float(i % 3) for i in range(e)])  # ties at every level
    ids, weights = check_route(logits, k, True, device)
    assert ids[0].tolist() == [0, 1, 2, 3]
    assert ids[1, :3].tolist() == [3, 9, 12]
    assert ids[2, :2].tolist() == [14, 15]
    assert ids[3].tolist() == [0, 2, 4, 6]
    assert ids[4].tolist() == [2, 5, 8, 11]
    # equal logits, equal weights, exactly
    assert torch.equal(weights[0], torch.full((k,), 0.25))
    for t in range(ids.shape[0]):  # k distinct experts per token, in non-increasing logit order
        assert len(set(ids[t].tolist())) == k
        assert (np.diff(logits[t, ids[t].long()].numpy()) <= 0).all()


# logit - max overflows to -inf for logits of opposite sign near float32's max: exp(-inf) = 0 is the right
# weight, and the interpreter's numpy only warns about it
@pytest.mark.filterwarnings("ignore:overflow encountered in subtract:RuntimeWarning")
@pytest.mark.parametrize("dtype,scale", [("float32", 1e4), ("float32", 3e38), ("float16", 6e4), ("bfloat16", 1e38)])
def test_large_logits_do_not_overflow(dtype, scale, device):
    logits = (torch.rand(23, 32) * 2 - 1) * scale  # signed, spanning the dtype's range
    logits = logits.clamp(-torch.finfo(torch_dtype(dtype)).max, torch.finfo(torch_dtype(dtype)).max)
    logits = logits.to(torch_dtype(dtype))
    top = logits.max(dim=1, keepdim=True).values
    at_max = (logits == top).sum(1)
    # rows whose largest logits dwarf the rest (the next is > 100 below: exp(-100) is below a float32 unit); the
    # draw is the run's, so a row whose two largest logits are close (float32 at 1e4) is left out, not assumed
    dwarfed = (top[:, 0] - torch.where(logits == top, -torch.inf, logits).max(dim=1).values).double() > 100
    assert dwarfed.sum() >= logits.shape[0] // 2, dwarfed
    for renormalize in (True, False):
        ids, weights = check_route(logits, 3, renormalize, device)
        assert torch.isfinite(weights).all()
        # there the c experts tied at the max share all the weight equally (1 / c, rounded to float32)
        share = (1.0 / (at_max.clamp(max=3) if renormalize else at_max).double()).float()
        assert torch.equal(weights[:, 0][dwarfed], share[dwarfed])


def test_renormalize_sums_to_one_and_off_keeps_softmax(device):
    logits = torch.randn(31, 12)
    _, w_on = check_route(logits, 3, True, device)
    _, w_off = check_route(logits, 3, False, device)
    assert_close(w_on.double().sum(1), np.ones(31), atol=16 * unit_roundoff("float32"), name="sum of weights")
    full = torch.softmax(logits.double(), dim=1)
    assert (w_off.double().sum(1) < 1.0).all() and (w_off.double().sum(1) <= full.topk(3).values.sum(1) + 1e-6).all()


def test_strided_logits_and_empty_batch(device):
    base = torch.randn(40, 2 * 24, device=device)
    check_route(base[:, ::2], 5, True, device)  # column stride 2
    check_route(base.t().contiguous().t()[:17], 2, False, device)  # column-major
    ids, weights = K.route(torch.randn(0, 8, device=device), 2)
    assert ids.shape == (0, 2) and weights.shape == (0, 2)


@pytest.mark.bad_input
@pytest.mark.parametrize("args,kwargs,name", [
    ((torch.randn(4, 8), 0), {}, "top_k"),
    ((torch.randn(4, 8), 9), {}, "top_k"),
    ((torch.randn(4, 8), 2.0), {}, "top_k"),
    ((torch.randn(8), 2), {}, "router_logits"),
    ((torch.randint(0, 5, (4, 8)), 2), {}, "router_logits"),
    ((torch.randn(4, 8), 2), {"scoring": "softplus"}, "scoring"),
    ((torch.randn(4, 8), 2), {"num_groups": 4, "topk_groups": 5}, "topk_groups"),
    ((torch.randn(4, 8), 2), {"num_groups": 3, "topk_groups": 1}, "num_groups"),  # 3 does not divide 8
    ((torch.randn(4, 8), 2), {"num_groups": 8, "topk_groups": 1}, "num_groups"),  # groups of one expert
    ((torch.randn(4, 8), 2), {"num_groups": 4}, "topk_groups"),
    ((torch.randn(4, 8), 2), {"topk_groups": 2}, "num_groups"),
    ((torch.randn(4, 8), 5), {"num_groups": 4, "topk_groups": 2}, "top_k"),  # 2 groups of 2 hold 4 experts
    ((torch.randn(4, 8), 2), {"correction_bias": torch.zeros(7)}, "correction_bias"),
    ((torch.randn(4, 8), 2), {"correction_bias": torch.zeros(1, 8)}, "correction_bias"),
    ((torch.randn(4, 8), 2), {"routed_scaling_factor": float("nan")}, "routed_scaling_factor"),
])
@pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])
def test_bad_input_raises(impl, args, kwargs, name, device):
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=name):
        impl.route(args[0].to(device), *args[1:], **kwargs)


# the device fixture is the same for every example
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_tokens=st.integers(1, 9), num_experts=st.integers(1, 20), data=st.data(),
       levels=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_route_property_with_many_ties(num_tokens, num_experts, data, levels, seed, device):
    """Logits drawn from a few levels (ties everywhere): ids bitwise equal to the reference, weights close."""
    top_k = data.draw(st.integers(1, num_experts))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, levels, (num_tokens, num_experts), generator=gen).float() * 1.5 - 3.0
    check_route(logits, top_k, data.draw(st.booleans()), device)


# ------------------------------------------------------------------------ DeepSeek: bias, groups, scaling, sigmoid

DEEPSEEK_LIKE = {  # name -> (tokens, experts, top_k, router keywords)
    "v3-e256-g8-k4-top8": (12, 256, 8, dict(scoring="sigmoid", correction_bias=True, num_groups=8, topk_groups=4,
                                            routed_scaling_factor=2.5)),
    "v2-e160-g8-k3-top6": (12, 160, 6, dict(renormalize=False, num_groups=8, topk_groups=3,
                                            routed_scaling_factor=16.0)),
    "sigmoid-e64-top6-unnormalised": (9, 64, 6, dict(scoring="sigmoid", renormalize=False)),
    "g5-of-40-top6-biased-softmax": (9, 40, 6, dict(correction_bias=True, num_groups=5, topk_groups=2)),
    "g3-of-24-top5": (9, 24, 5, dict(scoring="sigmoid", num_groups=3, topk_groups=2, routed_scaling_factor=0.5)),
}


def deepseek_like(name: str, dtype: str = "float32", seed: int = 0):
    """``(logits tensor, top_k, renormalize, router keywords)`` from the check cases' builder (ties planted, one NaN
    token, distinct scores apart by more than float32 can blur)."""
    tokens, experts, top_k, router = DEEPSEEK_LIKE[name]
    logits, bias, kwargs, _ = router_inputs(dict(tokens=tokens, experts=experts, top_k=top_k, dtype=dtype, **router),
                                            seed)
    if bias is not None:
        kwargs["correction_bias"] = torch.from_numpy(bias).float()
    renormalize = kwargs.pop("renormalize", True)
    return torch.from_numpy(logits).to(torch_dtype(dtype)), top_k, renormalize, kwargs


@pytest.mark.parametrize("name, dtype", [(name, "float32") for name in DEEPSEEK_LIKE] + [
    ("v3-e256-g8-k4-top8", "bfloat16"), ("v2-e160-g8-k3-top6", "bfloat16")])
def test_deepseek_routers_match_reference(name, dtype, device):
    logits, top_k, renormalize, router = deepseek_like(name, dtype)
    nan_rows = torch.isnan(logits.float()).any(1)
    clean = logits[~nan_rows]
    check_route(clean, top_k, renormalize, device, **router)
    ids, weights = K.route(logits.to(device), top_k, renormalize=renormalize,
                           **{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in router.items()})
    ids, weights = ids.cpu(), weights.cpu()
    assert nan_rows.any() and torch.isnan(weights[nan_rows]).all() and not torch.isnan(weights[~nan_rows]).any()
    assert ((ids >= 0) & (ids < logits.shape[1])).all() and all(len(set(r)) == top_k for r in ids.tolist())


def test_group_ties_go_to_the_lower_group_id(device):
    """8 experts in 4 groups of 2; groups 1 and 3 are exact twins at the top, one group kept: group 1's."""
    logits = torch.tensor([[0.0, -1.0, 2.0, 1.5, -0.5, 0.3, 2.0, 1.5],
                           [0.0, -1.0, 1.5, 2.0, -0.5, 0.3, 2.0, 1.5]])  # row 1: the twin's experts swapped
    for scoring in ("sigmoid", "softmax"):
        ids, _ = check_route(logits, 2, True, device, scoring=scoring, num_groups=4, topk_groups=1)
        assert ids.tolist() == [[2, 3], [3, 2]], (scoring, ids.tolist())
    bias = torch.tensor([0.0, 0.0, 0.1, -0.1, 0.0, 0.0, 0.1, -0.1])  # the twins keep the same biases
    ids, _ = check_route(logits[:1], 2, True, device, scoring="sigmoid", correction_bias=bias, num_groups=4,
                         topk_groups=1)
    assert ids.tolist() == [[2, 3]]


def test_the_bias_selects_and_never_weighs(device):
    """A bias brings expert 5 in and pushes the best logit out; the weights stay the unbiased sigmoid scores."""
    logits = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0, -0.5]])
    bias = torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    ids, w = check_route(logits, 2, False, device, scoring="sigmoid", correction_bias=bias)
    assert ids.tolist() == [[5, 1]]
    assert_close(w, torch.sigmoid(logits[0, [5, 1]].double())[None].numpy(), atol=8 * unit_roundoff("float32"),
                 name="unbiased weights")
    ids, w = check_route(logits, 2, True, device, scoring="sigmoid", correction_bias=bias, routed_scaling_factor=2.5)
    assert_close(w.double().sum(1), np.full(1, 2.5), atol=64 * unit_roundoff("float32"), name="weights sum to 2.5")


def test_groups_limit_the_choice(device):
    """The second-best expert sits in a group whose other experts are poor: with 2 of 4 groups kept, it is dropped
    for an expert of a group scored higher by its two best (a group is scored by its top two, not its best)."""
    logits = torch.tensor([[5.0, -4.0, -4.0, 4.0, 3.0, 3.5, 3.2, 3.1, -3.0, -3.0, -3.0, -3.0]])  # groups of 3
    ids, _ = check_route(logits, 3, True, device, scoring="sigmoid", num_groups=4, topk_groups=2)
    ungrouped, _ = check_route(logits, 3, True, device, scoring="sigmoid")
    assert ungrouped.tolist() == [[0, 3, 5]] and ids.tolist() == [[3, 5, 6]], ids.tolist()


# the device fixture is the same for every example
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.integers(1, 4), size=st.integers(2, 5), tokens=st.integers(1, 5), data=st.data(),
       seed=st.integers(0, 2**31))
def test_grouped_router_property_with_many_ties(groups, size, tokens, data, seed, device):
    """Logits and biases drawn from a few levels (ties everywhere, exact in every precision); any group count,
    kept groups and k, either scoring, biased or not. Inputs whose distinct scores float32 could blur are skipped."""
    from hypothesis import assume

    experts = groups * size
    kept = data.draw(st.integers(1, groups))
    top_k = data.draw(st.integers(1, kept * size))
    scoring = data.draw(st.sampled_from(["softmax", "sigmoid"]))
    rng = np.random.default_rng(seed)
    logits = rng.choice([-2.7, -1.1, 0.4, 1.9, 3.3], size=(tokens, experts))
    bias = rng.choice([0.0, 0.15, -0.35], size=experts) if data.draw(st.booleans()) else None
    margin = score_margin(experts, scoring)
    assume(not any(_conflicts(row, bias, scoring, groups, margin) for row in logits))
    router = dict(scoring=scoring, num_groups=groups, topk_groups=kept,
                  routed_scaling_factor=data.draw(st.sampled_from([1.0, 2.5])))
    if bias is not None:
        router["correction_bias"] = torch.from_numpy(bias).float()
    check_route(torch.from_numpy(logits).float(), top_k, data.draw(st.booleans()), device, **router)
