"""fused_moe against the contract's per-token loop: dense (fp32/fp16/bf16), int4 and fp8 block weights.

Routing is skewed (a hot expert, empty experts, one-row experts) and the weights of every expert no token is
routed to are poisoned with NaN (dense data, int4 scales, fp8 data): a kernel that lets an empty expert touch
the output produces NaN.

Roundings (see ``moe_error_bound``): the reference models the kernel's discrete steps exactly (the fp8
quantization of both GEMM inputs, with the same ``quantize_fp8_act``; ``h`` rounded to the dtype the kernel
stores it in, ``kernels.triton.moe.intermediate_dtype``). What is left is float32 accumulation, the int4
weights' dequantization in the compute dtype, rounding *flips* where the kernel's float32 value of ``h`` and
the exact one fall on different sides of a rounding boundary, and the final cast: the tolerance covers those,
element by element, in two tiers: a worst-case bound every element must meet (a flip allowed anywhere), and a
no-flip bound that all but 5% of the rows must meet (flips are rare; a kernel that rounds differently breaks it
everywhere, see ``test_a_wrong_kernel_fails``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.assertions import assert_close, describe_mismatch
from correctness.inputs import torch_dtype
from correctness.moe_inputs import signed_activations, signed_weights, skewed_router_logits
from correctness.tolerances import unit_roundoff
from kernels import reference as R
from kernels import triton as K
from kernels.reference.moe import dequantized, fp8_act, silu
from kernels.triton.moe import intermediate_dtype

U32 = unit_roundoff("float32")
SILU_SLOPE_MAX = 1.1  # max |d silu / dx| = 1.0998...


# ------------------------------------------------------------------------------------------------ inputs

def skewed_topk(num_tokens: int, num_experts: int, top_k: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """Skewed routing from ``skewed_router_logits`` (hot expert, cold experts that stay empty), then one
    token's last slot moved to a cold expert so that expert serves exactly one row."""
    logits = skewed_router_logits(num_tokens, num_experts, rng)
    ids, weights = R.route(logits, top_k)
    if num_tokens >= 2 and num_experts > top_k + 1:
        empty = np.setdiff1d(np.arange(num_experts), ids)
        if empty.size:
            ids[num_tokens // 2, -1] = empty[0]  # a one-row expert
    return torch.from_numpy(ids), torch.from_numpy(weights.astype(np.float32))


def make_moe(num_tokens, hidden, inter, num_experts, top_k, dtype, kind, *, seed=0, zero_point=False):
    """x, w13, w2 (dense in ``dtype``, Int4Weight or Fp8Weight), topk_ids, topk_weights; unrouted experts NaN."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(signed_activations(num_tokens, hidden, rng)).to(torch_dtype(dtype))
    w13 = torch.from_numpy(signed_weights(num_experts, 2 * inter, hidden, rng)).float()
    w2 = torch.from_numpy(signed_weights(num_experts, hidden, inter, rng)).float()
    ids, weights = skewed_topk(num_tokens, num_experts, top_k, rng)
    unused = torch.from_numpy(np.setdiff1d(np.arange(num_experts), ids.numpy()))
    if kind == "int4":
        w13 = R.quantize_int4(w13, group_size=32, zero_point=zero_point)
        w2 = R.quantize_int4(w2, group_size=32, zero_point=zero_point)
        for w in (w13, w2):
            w.scales[unused] = float("nan")
    elif kind == "fp8":
        w13, w2 = R.quantize_fp8(w13, "block", (128, 128)), R.quantize_fp8(w2, "block", (128, 128))
        for w in (w13, w2):
            w.data[unused] = float("nan")
    else:
        w13, w2 = w13.to(torch_dtype(dtype)), w2.to(torch_dtype(dtype))
        w13[unused] = float("nan")
        w2[unused] = float("nan")
    return x, w13, w2, ids, weights


# ------------------------------------------------------------------------------------------------ tolerance

def moe_error_bound(x, w13, w2, ids, weights, ref, kind: str, *, strict: bool = False) -> np.ndarray:
    """Per-element bound ``[T, H]`` on |kernel - reference|, first order in the roundings, from the magnitudes.

    Per (token, slot) pair routed to expert e, with ``a`` the GEMM input as both sides see it:
    - GEMM 1: float32 accumulation over H terms, ``H u32 |W13| |a|``, plus 2 u32 for the int4 group / fp8 block
      scale applied to each float32 partial. Every weight enters the MMA exactly (dense in its dtype; int4 as the
      small integers nibble - z; e4m3 x e4m3 products are exact in float32), so there is no weight rounding.
    - ``h = silu(g) * up`` moves by ``1.1 |up| e_g + |silu(g)| e_up + 1.1 e_g e_up`` plus ``4 u32 |h|`` for its
      float32 evaluation. For fp8, the quantization scale of each 128-group moves with its amax (relative
      ``e_h / amax``) and moves every element of the group that much. Rounding h to its storage dtype (and the
      fp8 quantization) is modelled by the reference; where the kernel's value and the exact one straddle a
      rounding boundary the two roundings *flip*: they differ by up to 2 u_h |h| (2 u_fp8 |h| for fp8, one
      e4m3 step). The full bound allows a flip on every element (worst case); ``strict=True`` allows none:
      with e_h ~ 1e-7 |h| a flip is rare (~ e_h / (u_h |h|) per element), so nearly every row meets it, and a
      kernel that rounds h or gate/up differently (truncation, an extra cast) breaks it on most rows.
    - GEMM 2: ``|W2| e_h`` plus ``(I + 2) u32 |W2| |h|``.
    - un-permute: weights ``w_j`` (float32, exact on both sides) times the above, summed; float32 sum over k
      terms ``k u32``; the final cast ``u (|ref| + bound so far)`` (|ref| is the float64 reference output).
    """
    dtype = str(x.dtype).replace("torch.", "")
    u = unit_roundoff(dtype)
    u_h = unit_roundoff(str(intermediate_dtype(kind, x.dtype)).replace("torch.", ""))
    xs = x.double().numpy()
    w13d, w2d = dequantized(w13), dequantized(w2)
    ids_np, wts = ids.long().numpy(), weights.double().numpy()
    num_tokens, hidden = xs.shape
    inter = w2d.shape[2]
    bound = np.zeros((num_tokens, hidden))
    out_mag = np.zeros((num_tokens, hidden))
    a_all = fp8_act(xs) if kind == "fp8" else xs
    for e in np.unique(ids_np):
        tok, slot = np.nonzero(ids_np == e)
        a = a_all[tok]
        w13e, w2e = w13d[e], w2d[e]
        gu = a @ w13e.T
        e_gu = (hidden + 2) * U32 * (np.abs(a) @ np.abs(w13e).T)
        g, up, e_g, e_up = gu[:, :inter], gu[:, inter:], e_gu[:, :inter], e_gu[:, inter:]
        h = silu(g) * up
        e_h = SILU_SLOPE_MAX * np.abs(up) * e_g + np.abs(silu(g)) * e_up + SILU_SLOPE_MAX * e_g * e_up
        e_h += 4 * U32 * np.abs(h)
        h_in = np.abs(h)
        if kind == "fp8":
            h_in = np.abs(fp8_act(h))
            groups = -(-inter // 128)
            amax = np.maximum.reduceat(np.abs(h), np.arange(0, inter, 128), axis=1)
            e_amax = np.maximum.reduceat(e_h, np.arange(0, inter, 128), axis=1)
            scale_move = np.repeat(e_amax / np.maximum(amax, 1e-300), 128, axis=1)[:, :inter]
            e_h = e_h + scale_move * np.abs(h)
            assert groups >= 1
        if not strict:
            e_h = e_h + 2 * (unit_roundoff("float8_e4m3fn") if kind == "fp8" else u_h) * np.abs(h)
        y_mag = h_in @ np.abs(w2e).T
        e_y = e_h @ np.abs(w2e).T + (inter + 2) * U32 * y_mag
        wj = wts[tok, slot][:, None]
        np.add.at(bound, tok, wj * e_y)
        np.add.at(out_mag, tok, wj * y_mag)
    top_k = ids_np.shape[1] if ids_np.ndim == 2 else 1
    bound += top_k * U32 * out_mag + U32 * max(float(out_mag.max(initial=0.0)), 1e-30)
    return bound + u * (np.abs(ref) + bound)


def check_fused_moe(x, w13, w2, ids, weights, kind: str, *, max_strict_rows: float = 0.05):
    """Run kernel and reference: every element within the bound, and the no-flip (strict) bound met on all
    but a fraction ``max_strict_rows`` of the output rows."""
    out = K.fused_moe(x, w13, w2, ids, weights)
    assert out.dtype == x.dtype and out.shape == x.shape
    ref = R.fused_moe(x, w13, w2, ids, weights, intermediate_dtype=intermediate_dtype(kind, x.dtype))
    got = out.double().numpy()
    bound = moe_error_bound(x, w13, w2, ids, weights, ref, kind)
    # elementwise |out - ref| <= bound, as one verbose comparison in units of the bound
    assert_close(got / bound, ref / bound, atol=1.0, name=f"fused_moe {kind} (in units of the bound)")
    strict = moe_error_bound(x, w13, w2, ids, weights, ref, kind, strict=True)
    over = (np.abs(got - ref) > strict).any(axis=1)
    assert over.mean() <= max_strict_rows, (
        f"{int(over.sum())} of {len(over)} rows exceed the no-flip bound (at most {max_strict_rows:.0%} may): "
        + (describe_mismatch(got / strict, ref / strict, atol=1.0, name="out in units of the strict bound") or ""))
    return out, ref, bound


# ------------------------------------------------------------------------------------------------ tests

DENSE_SHAPES = [  # (T, H, I, E, k): T = 1 (decode), a few hundred (prefill), E from 1 to 64
    (1, 80, 48, 8, 2),
    (203, 80, 48, 8, 2),
    (37, 72, 40, 1, 1),
    (150, 48, 24, 64, 6),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "T{}-H{}-I{}-E{}-k{}".format(*s))
def test_dense_matches_reference(dtype, shape):
    t, h, i, e, k = shape
    x, w13, w2, ids, weights = make_moe(t, h, i, e, k, dtype, "dense")
    check_fused_moe(x, w13, w2, ids, weights, "dense")


@pytest.mark.parametrize("zero_point", [False, True], ids=["symmetric", "zero_point"])
@pytest.mark.parametrize("dtype,num_tokens", [("bfloat16", 1), ("float16", 181), ("bfloat16", 181)])
def test_int4_matches_reference(dtype, num_tokens, zero_point):
    x, w13, w2, ids, weights = make_moe(num_tokens, 160, 96, 8, 2, dtype, "int4", zero_point=zero_point)
    check_fused_moe(x, w13, w2, ids, weights, "int4")


@pytest.mark.parametrize("dtype,num_tokens,num_experts,top_k", [("bfloat16", 1, 8, 2), ("bfloat16", 160, 16, 4),
                                                                 ("float16", 97, 8, 2)])
def test_fp8_block_matches_reference(dtype, num_tokens, num_experts, top_k):
    # H = 200: two 128-blocks, the second partial; I = 72 < 128: one partial block per row of w2
    x, w13, w2, ids, weights = make_moe(num_tokens, 200, 72, num_experts, top_k, dtype, "fp8")
    check_fused_moe(x, w13, w2, ids, weights, "fp8")


@pytest.mark.parametrize("kind", ["dense", "int4", "fp8"])
def test_empty_batch(kind):
    x, w13, w2, ids, weights = make_moe(0, 64, 32, 4, 2, "bfloat16", kind)
    out = K.fused_moe(x, w13, w2, ids, weights)
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16
    assert R.fused_moe(x, w13, w2, ids, weights).shape == (0, 64)


def test_weights_and_slots_matter():
    """The two slots of a token are weighted, not averaged: swapping ids against weights changes the output,
    and a zero weight removes that expert (its NaN-free contribution) exactly."""
    x, w13, w2, ids, weights = make_moe(9, 64, 32, 4, 2, "float32", "dense")
    w13 = torch.nan_to_num(w13)
    w2 = torch.nan_to_num(w2)
    weights = torch.rand(9, 2) + 0.1
    base, ref, bound = check_fused_moe(x, w13, w2, ids, weights, "dense")
    only_first = weights.clone()
    only_first[:, 1] = 0.0
    out1, ref1, _ = check_fused_moe(x, w13, w2, ids, only_first, "dense")
    assert np.abs(ref1 - ref).max() > 10 * bound.max()  # the second slot's contribution is far above noise


def _truncate_to_bf16(h: torch.Tensor) -> torch.Tensor:
    return (h.float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


@pytest.mark.parametrize("bug", ["h truncated", "gate/up rounded to bf16", "slot weights swapped"])
def test_a_wrong_kernel_fails(monkeypatch, bug):
    """The tolerance is tight enough to catch one wrong rounding, not only wrong math."""
    import kernels.triton.moe as moe

    silu_and_mul, unpermute = moe.silu_and_mul, moe.moe_unpermute
    if bug == "h truncated":  # what the interpreter's own float32 -> bfloat16 .to() does
        monkeypatch.setattr(moe, "silu_and_mul", lambda gu, dt=None: _truncate_to_bf16(silu_and_mul(gu, torch.float32)))
    elif bug == "gate/up rounded to bf16":
        monkeypatch.setattr(moe, "silu_and_mul", lambda gu, dt=None: silu_and_mul(gu.to(torch.bfloat16).float(), dt))
    else:
        monkeypatch.setattr(moe, "moe_unpermute", lambda y, si, w, dt: unpermute(y, si, w.flip(1).contiguous(), dt))
    x, w13, w2, ids, weights = make_moe(64, 80, 48, 8, 2, "bfloat16", "dense")
    with pytest.raises(AssertionError, match="bound"):
        check_fused_moe(x, w13, w2, ids, weights, "dense")


def bad_cases():
    x, w13, w2, ids, weights = make_moe(5, 64, 32, 4, 2, "float32", "dense")
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


@pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])
def test_bad_input_raises(impl):
    cases, (x, w13, w2, ids, weights) = bad_cases()
    for name, change in cases:
        args = dict(x=x, w13=w13, w2=w2, ids=ids, weights=weights, activation="silu")
        args.update(change)
        with pytest.raises(ValueError, match=name):
            impl.fused_moe(args["x"], args["w13"], args["w2"], args["ids"], args["weights"],
                           activation=args["activation"])
