"""fused_moe against the contract's per-token loop: dense (fp32/fp16/bf16), int4 and fp8 block weights.

Routing is skewed (a hot expert, empty experts, one-row experts) and the weights of every expert no token is
routed to are poisoned with NaN (dense data, int4 scales, fp8 data): a kernel that lets an empty expert touch
the output produces NaN.

Roundings (see ``kernels.testing.moe.moe_error_bound``), judged against the float64 definition so that every
rounding the contract allows passes, ours or not: the fp8 quantization of both GEMM inputs is the contract's
(the same ``quantize_fp8_act``); the intermediate ``h`` may stay in float32 or be stored in x's dtype. What is
left is float32 accumulation (weights enter the MMA exactly, int4 and fp8 included), that store of ``h``,
rounding *flips* where an implementation's float32 value of ``h`` and the exact one fall on different sides
of a rounding boundary, and the final cast. Two tiers, element by element: a worst-case bound against the
float64 definition every element must meet (the store of ``h`` and a flip allowed anywhere), and a no-flip
bound that all but 5% of the rows must meet against the reference with ``h`` rounded one of the allowed ways
(``INTERMEDIATES``; the implementation's own way is the one it meets: flips are rare, and a kernel that rounds
differently breaks it against every allowed way, see ``test_a_wrong_kernel_fails``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.ops import Inputs
from kernels.testing.assertions import assert_close, describe_mismatch
from kernels.testing.diagnosis_experts import fused_moe as diagnose_moe
from kernels.testing.moe import STRICT_ROW_FRACTION, make_moe, run_fused_moe
from kernels import reference as R
from correctness.impl import T as K


def check_fused_moe(x, w13, w2, ids, weights, kind: str):
    """Implementation vs the float64 definition: every element within the worst-case bound, and the no-flip
    (strict) bound met on all but ``STRICT_ROW_FRACTION`` of the output rows against the reference with ``h``
    rounded one of the ways the contract allows. Returns ``(out, ref, bound)``."""
    out, ref, bound, strict = run_fused_moe(x, w13, w2, ids, weights, kind, fn=K.fused_moe)  # the impl under test
    assert out.dtype == x.dtype and out.shape == x.shape
    got = out.detach().cpu().double().numpy()
    # elementwise |out - ref| <= bound, as one verbose comparison in units of the bound
    inputs = Inputs("fused_moe", {}, (x, w13, w2, ids, weights), {})
    assert_close(got / bound, ref / bound, atol=1.0, name=f"fused_moe {kind} (in units of the bound)",
                 diagnose=lambda *_: diagnose_moe(inputs, "out", got, ref, bound))
    over = {label: (np.abs(got - ref_h) > tol).any(axis=1) for label, (ref_h, tol) in strict.items()}
    best = min(over, key=lambda label: over[label].mean())
    ref_h, tol = strict[best]
    assert over[best].mean() <= STRICT_ROW_FRACTION, (
        f"{int(over[best].sum())} of {len(over[best])} rows exceed the no-flip bound against the reference with "
        f"{best} (at most {STRICT_ROW_FRACTION:.0%} may; against every allowed rounding of h: "
        + ", ".join(f"{label}: {int(o.sum())} rows" for label, o in over.items()) + "): "
        + (describe_mismatch(got / tol, ref_h / tol, atol=1.0, name="out in units of the strict bound") or ""))
    return out, ref, bound


# ------------------------------------------------------------------------------------------------ tests

DENSE_SHAPES = [  # (T, H, I, E, k): T = 1 (decode), a few hundred (prefill), E from 1 to 64
    (1, 80, 48, 8, 2),
    (203, 80, 48, 8, 2),
    (37, 72, 40, 1, 1),
    (150, 48, 24, 64, 6),
]


@pytest.mark.host_only("the routing generator's skew, on host tensors: no kernel")
@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(203, 8, 2), (150, 64, 6), (160, 16, 4), (97, 8, 2)])
def test_routing_is_skewed(num_tokens, num_experts, top_k):
    """The parity inputs really have a hot expert (in most tokens' top-k), empty experts and a one-row expert."""
    _, _, _, ids, weights = make_moe(num_tokens, 64, 32, num_experts, top_k, "float32", "dense")
    counts = np.bincount(ids.numpy().ravel(), minlength=num_experts)
    assert counts.max() >= 0.9 * num_tokens, counts
    assert (counts == 0).any() and (counts == 1).any(), counts
    assert all(len(set(row)) == top_k for row in ids.tolist())  # k distinct experts per token
    assert torch.allclose(weights.double().sum(1), torch.ones(num_tokens, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "T{}-H{}-I{}-E{}-k{}".format(*s))
def test_dense_matches_reference(dtype, shape, device):
    t, h, i, e, k = shape
    x, w13, w2, ids, weights = make_moe(t, h, i, e, k, dtype, "dense", device=device)
    check_fused_moe(x, w13, w2, ids, weights, "dense")


@pytest.mark.parametrize("zero_point", [False, True], ids=["symmetric", "zero_point"])
@pytest.mark.parametrize("dtype,num_tokens", [("bfloat16", 1), ("float16", 181), ("bfloat16", 181)])
def test_int4_matches_reference(dtype, num_tokens, zero_point, device):
    x, w13, w2, ids, weights = make_moe(num_tokens, 160, 96, 8, 2, dtype, "int4", zero_point=zero_point,
                                        device=device)
    check_fused_moe(x, w13, w2, ids, weights, "int4")


@pytest.mark.parametrize("dtype,num_tokens,num_experts,top_k", [("bfloat16", 1, 8, 2), ("bfloat16", 160, 16, 4),
                                                                 ("float16", 97, 8, 2)])
def test_fp8_block_matches_reference(dtype, num_tokens, num_experts, top_k, device):
    # H = 200: two 128-blocks, the second partial; I = 72 < 128: one partial block per row of w2
    x, w13, w2, ids, weights = make_moe(num_tokens, 200, 72, num_experts, top_k, dtype, "fp8", device=device)
    check_fused_moe(x, w13, w2, ids, weights, "fp8")


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.parametrize("kind,hidden", [("int4", 64), ("fp8", 128)])
def test_w2_split_k_inside_fused_moe(kind, hidden, device):
    """I = 2048 (2 x MIN_SPLIT_K) and a decode-sized batch: the plan splits the down GEMM's K in two (its
    float32 partials and their in-order sum), under poisoned allocations; the result stays within the bound."""
    from correctness.test_unwritten_outputs import poisoned_allocations
    from kernels.runtime import interpreter_enabled
    from roofline.counting import count_traffic

    if not interpreter_enabled():
        pytest.skip("launch grids are recorded under the Triton interpreter")
    x, w13, w2, ids, weights = make_moe(3, hidden, 2048, 4, 2, "bfloat16", kind, group_size=32, device=device)
    with poisoned_allocations(), count_traffic() as counter:
        check_fused_moe(x, w13, w2, ids, weights, kind)
    gemms = [launch.grid for launch in counter.launches if "gemm" in launch.kernel]
    assert [g[2] for g in gemms] == [1, 2], gemms  # w13 (K = H) unsplit, w2 (K = 2048) in two slices
    assert sum("sum_splits" in launch.kernel for launch in counter.launches) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("kind,dtype,num_experts,top_k", [("dense", "bfloat16", 8, 2), ("int4", "float16", 8, 2),
                                                          ("fp8", "bfloat16", 16, 4)])
def test_gpu_serving_shapes(kind, dtype, num_experts, top_k, device):
    """Tile-sized and larger shapes on a GPU (tensor-core paths, multi-tile groups): T = 512, H = 1024,
    I = 1408 (11 x 128: not a power of two)."""
    x, w13, w2, ids, weights = make_moe(512, 1024, 1408, num_experts, top_k, dtype, kind, group_size=128,
                                        device=device)
    check_fused_moe(x, w13, w2, ids, weights, kind)


@pytest.mark.parametrize("kind", ["dense", "int4", "fp8"])
def test_empty_batch(kind, device):
    x, w13, w2, ids, weights = make_moe(0, 64, 32, 4, 2, "bfloat16", kind, device=device)
    out = K.fused_moe(x, w13, w2, ids, weights)
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16
    assert R.fused_moe(x, w13, w2, ids, weights).shape == (0, 64)


def test_weights_and_slots_matter(device):
    """Arbitrary (not normalised) weights are honoured, and zeroing the second slot's weight changes the
    output by far more than the tolerance: the comparison sees every slot."""
    x, w13, w2, ids, weights = make_moe(9, 64, 32, 4, 2, "float32", "dense", device=device)
    w13 = torch.nan_to_num(w13)
    w2 = torch.nan_to_num(w2)
    weights = torch.rand(9, 2, device=device) + 0.1
    base, ref, bound = check_fused_moe(x, w13, w2, ids, weights, "dense")
    only_first = weights.clone()
    only_first[:, 1] = 0.0
    out1, ref1, _ = check_fused_moe(x, w13, w2, ids, only_first, "dense")
    assert np.abs(ref1 - ref).max() > 10 * bound.max()  # the second slot's contribution is far above noise


def test_strided_x_and_int64_ids(device):
    """x as a column window of a NaN-filled buffer (row stride > H), topk_ids as int64."""
    x, w13, w2, ids, weights = make_moe(57, 80, 48, 8, 2, "bfloat16", "dense", device=device)
    buf = torch.full((57, 96), float("nan"), dtype=x.dtype, device=device)
    buf[:, 8:88] = x
    check_fused_moe(buf[:, 8:88], w13, w2, ids.long(), weights, "dense")


def _truncate_to_bf16(h: torch.Tensor) -> torch.Tensor:
    return (h.float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


@pytest.mark.parametrize("bug", ["h truncated", "gate/up rounded to bf16", "slot weights swapped"])
@pytest.mark.servekernels  # about this project's kernels, not the contract
def test_a_wrong_kernel_fails(monkeypatch, bug, device):
    """The tolerance is tight enough to catch one wrong rounding, not only wrong math."""
    import kernels.triton.ops.fused_moe as moe

    silu_and_mul, unpermute = moe.silu_and_mul, moe.moe_unpermute
    if bug == "h truncated":  # what the interpreter's own float32 -> bfloat16 .to() does
        monkeypatch.setattr(moe, "silu_and_mul", lambda gu, dt=None: _truncate_to_bf16(silu_and_mul(gu, torch.float32)))
    elif bug == "gate/up rounded to bf16":
        monkeypatch.setattr(moe, "silu_and_mul", lambda gu, dt=None: silu_and_mul(gu.to(torch.bfloat16).float(), dt))
    else:
        monkeypatch.setattr(moe, "moe_unpermute", lambda y, si, w, dt: unpermute(y, si, w.flip(1).contiguous(), dt))
    x, w13, w2, ids, weights = make_moe(64, 80, 48, 8, 2, "bfloat16", "dense", device=device)
    with pytest.raises(AssertionError, match="bound"):
        check_fused_moe(x, w13, w2, ids, weights, "dense")


def bad_cases(device):
    x, w13, w2, ids, weights = make_moe(5, 64, 32, 4, 2, "float32", "dense", device=device)
    q13 = R.quantize_int4(torch.nan_to_num(w13), group_size=32)
    f2 = R.quantize_fp8(torch.nan_to_num(w2))
    return [
        ("x", dict(x=x[0])),
        ("x", dict(x=x.to(torch.int32))),
        ("w13", dict(w13=w13[:, :, :32])),  # K != H
        ("w13", dict(w13=w13[:, :63])),  # odd 2I
        ("w2", dict(w2=w2[:3])),  # E mismatch
        ("w2", dict(w2=w2[:, :, :16])),  # K != I
        ("w2", dict(w2=w2[:, :32])),  # N != H
        ("w13", dict(w13=w13.half())),  # dtype mismatch with x
        ("w2", dict(w13=q13)),  # int4 w13 with dense w2
        ("w2", dict(w13=q13, w2=f2)),  # int4 w13 with fp8 w2
        ("topk_ids", dict(ids=ids.clone().fill_(4))),
        ("topk_ids", dict(ids=-ids - 1)),
        ("topk_ids", dict(ids=ids[:4])),
        ("topk_weights", dict(weights=weights[:, :1])),
        ("topk_ids", dict(ids=ids.float())),
        ("activation", dict(activation="gelu")),
    ], (x, w13, w2, ids, weights)


@pytest.mark.bad_input
@pytest.mark.meta_unsupported("its cases quantize weights with the reference (host values) while building")
@pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])
def test_bad_input_raises(impl, device):
    cases, (x, w13, w2, ids, weights) = bad_cases(device)
    for name, change in cases:
        args = dict(x=x, w13=w13, w2=w2, ids=ids, weights=weights, activation="silu")
        args.update(change)
        with pytest.raises(ValueError, match=name):
            impl.fused_moe(args["x"], args["w13"], args["w2"], args["ids"], args["weights"],
                           activation=args["activation"])
