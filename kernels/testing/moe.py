"""fused_moe's poisoned inputs and per-element error bound, shared by its op spec (``kernels/ops/fused_moe.py``)
and its parity tests (``correctness/test_fused_moe.py``).

Expert counts, top-k and quantization formats are the models' own; routing is skewed (a hot expert, empty
experts, a one-row expert) and every expert no token uses holds NaN. The tolerance is per element
(``moe_error_bound``), against the float64 definition, admitting every rounding of the intermediate ``h`` the
contract allows (kept in float32, or stored in x's dtype); ``strict=True`` is the no-flip bound against the
reference with ``h`` rounded one of those ways (``INTERMEDIATES``), which at most ``STRICT_ROW_FRACTION`` of the
rows may exceed for the rounding the implementation uses.
"""
from __future__ import annotations

import numpy as np
import torch

from kernels import reference as R
from kernels import triton as K
from kernels.reference.moe import SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT, dequantized_expert, fp8_act, sigmoid, silu
from kernels.testing.gemm import accum_unit, padded_mx_scales, quantize_on_device
from kernels.testing.moe_inputs import master_weights, signed_activations, skewed_router_logits
from kernels.testing.paged import torch_dtype
from kernels.testing.tolerances import unit_roundoff
from kernels.testing.tolerances_gemm import gamma
from kernels.triton import quant as Q

SILU_SLOPE_MAX = 1.1  # max |d silu / dx| = 1.0998...
STRICT_ROW_FRACTION = 0.05  # rows allowed over the no-flip bound (flips are rare, see moe_error_bound)
# the roundings of h = silu(gate) * up the contract allows an implementation between its two GEMMs: float32 (or
# better: the no-flip bound's 16 u32 |h| covers an exact h) or a store in x's dtype ("input"); for fp8 weights
# either is then quantized per token-group of 128
INTERMEDIATES = ("float32", "input")
FP8_BLOCK = (128, 128)
INT4_GROUP = 32  # the parity tests' group (the catalogue's int4 case uses 128)


# ------------------------------------------------------------------------------------------------ inputs

def skewed_topk(num_tokens: int, num_experts: int, top_k: int, rng, renormalize: bool = True):
    """Skewed routing from ``skewed_router_logits`` (hot expert, cold experts that stay empty), then one
    token's last slot moved to a cold expert so that expert serves exactly one row. CPU int32 ids and float32
    weights (the reference router's, rounded once; ``renormalize=False``: softmax weights summing below 1)."""
    logits = skewed_router_logits(num_tokens, num_experts, rng)
    ids, weights = R.route(logits, top_k, renormalize=renormalize)
    if num_tokens >= 2 and num_experts > top_k + 1:
        empty = np.setdiff1d(np.arange(num_experts), ids)
        if empty.size > 1:  # keep at least one expert empty: its NaN weights are the poison
            ids[num_tokens // 2, -1] = empty[0]  # a one-row expert
    return torch.from_numpy(ids), torch.from_numpy(weights.astype(np.float32))


def make_moe(num_tokens, hidden, inter, num_experts, top_k, dtype, kind, *, seed=0, zero_point=False,
             group_size=INT4_GROUP, device="cpu", routing=None, renormalize=True):
    """x, w13, w2 (dense in ``dtype``, ``Int4Weight`` or ``Fp8Weight`` 128x128 blocks, quantized on ``device``:
    ``quantize_on_device``), topk_ids, topk_weights, all on ``device``; the weights of every expert no token is routed to are NaN (dense values, int4 scales,
    fp8 data). ``routing``: (ids, weights) to use instead of ``skewed_topk``'s (whose weights sum to 1 unless
    ``renormalize=False``)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(signed_activations(num_tokens, hidden, rng)).to(torch_dtype(dtype))
    w13 = master_weights(num_experts, 2 * inter, hidden, rng, device)
    w2 = master_weights(num_experts, hidden, inter, rng, device)
    ids, weights = skewed_topk(num_tokens, num_experts, top_k, rng, renormalize) if routing is None else routing
    unused = torch.from_numpy(np.setdiff1d(np.arange(num_experts), ids.numpy())).to(device)
    if kind == "int4":
        w13, w2 = (quantize_on_device(w, device, lambda w_e, **kw: Q.quantize_int4(w_e, group_size, zero_point, **kw))
                   for w in (w13, w2))
        for w in (w13, w2):
            w.scales[unused] = float("nan")
    elif kind == "fp8":
        w13, w2 = (quantize_on_device(w, device, lambda w_e, **kw: Q.quantize_fp8(w_e, "block", FP8_BLOCK, **kw))
                   for w in (w13, w2))
        for w in (w13, w2):
            w.data[unused] = float("nan")
    elif kind == "mxfp4":  # scales in a 255-padded buffer (a read past a row's end is NaN); unused experts' 255
        w13, w2 = (padded_mx_scales(quantize_on_device(w, device, Q.quantize_mxfp4)) for w in (w13, w2))
        for w in (w13, w2):
            w.scales[unused] = 255
    else:
        w13, w2 = w13.to(device, torch_dtype(dtype)), w2.to(device, torch_dtype(dtype))
        w13[unused] = float("nan")
        w2[unused] = float("nan")
    return (x.to(device), w13, w2, ids.to(device), weights.to(device))


def moe_biases(num_experts: int, hidden: int, inter: int, ids, *, seed: int = 0, device="cpu", gate_std: float = 3.0):
    """float32 ``(w13_bias [E, 2I], w2_bias [E, H])`` (gpt-oss has both), NaN for every expert ``ids`` never routes
    to. w13's bias is wide (std ``gate_std``: with O(1) GEMM outputs a few percent of the gate values pass 7 and of
    the up values pass +-7, so ``swiglu_oai``'s clamps act); w2's is of the outputs' size (std 0.5)."""
    rng = np.random.default_rng(seed + 17)
    b13 = torch.from_numpy(rng.standard_normal((num_experts, 2 * inter)) * gate_std).to(torch.float32)
    b2 = torch.from_numpy(rng.standard_normal((num_experts, hidden)) * 0.5).to(torch.float32)
    if ids.device.type != "meta":  # a meta tensor holds no ids (and the biases no values) to poison by
        unused = torch.from_numpy(np.setdiff1d(np.arange(num_experts), np.asarray(ids.cpu())))
        b13[unused] = float("nan")
        b2[unused] = float("nan")
    return b13.to(device), b2.to(device)


# ------------------------------------------------------------------------------------------------ tolerance

def moe_error_bound(x, w13, w2, ids, weights, ref, kind: str, *, strict: bool = False, activation: str = "silu",
                    w13_bias=None, w2_bias=None) -> np.ndarray:
    """Per-element bound ``[T, H]`` on |kernel - reference|, first order in the roundings, from the magnitudes.

    Per (token, slot) pair routed to expert e, with ``a`` the GEMM input as both sides see it:
    - GEMM 1: float32 accumulation over H terms, ``gamma_(H + r) |W13| |a|`` (r extra roundings: 2 for the int4
      group scale on each float32 partial, 4 for the fp8 block and activation scales). Every weight enters the
      MMA exactly (dense in its dtype; int4 as the small integers nibble - z; e4m3 x e4m3 products are exact
      in float32), so there is no weight rounding.
      A bias (float32, added to the float32 result) is one more rounding: ``gamma_(H + r + 1)`` of
      ``|W13| |a| + |b13|``. MXFP4 weights enter as twice their E2M1 value (exact) and the block scale, a power of
      two, multiplies each float32 partial exactly: r = 2 as for int4.
    - ``h = silu(g) * up`` moves by ``1.1 |up| e_g + |silu(g)| e_up + 1.1 e_g e_up`` plus ``16 u32 |h|`` for its
      float32 evaluation (exp: 2**-22 relative on a GPU). ``swiglu_oai`` (g, u the clamped interleaved pair,
      ``s(g) = g sigmoid(1.702 g)``, whose slope is silu's at 1.702 g, at most 1.1; the clamps are 1-Lipschitz):
      ``1.1 |u + 1| e_g + |s(g)| e_u + 1.1 e_g e_u``, plus ``2 u32 (|u| + 1) |s(g)|`` for ``u + 1`` in float32. For fp8, the quantization scale of each 128-group
      moves with its amax (relative ``e_h / amax``) and moves every element of the group that much.
    - Rounding h: the contract lets an implementation keep h in float32 or store it in x's dtype (``u_h`` =
      x's unit roundoff), and for fp8 weights quantizes it to e4m3 next. The full bound (``ref`` the float64
      definition, h exact) allows ``2 u_h |h|`` on every element (a store in x's dtype, or that rounding and
      the reference's modelled one falling on different sides of a boundary: a *flip*); for fp8 ``u_h |h|``
      (a store in x's dtype before quantizing, which also moves the group's scale) plus one e4m3 step
      ``2 u_fp8 |h|`` (a flip of the quantization). ``strict=True`` allows no flip and no unmodelled rounding:
      ``ref`` must then be the reference with h rounded as the implementation rounds it (``INTERMEDIATES``);
      with e_h ~ 1e-7 |h| a flip is rare (~ e_h / (u_h |h|) per element), so nearly every row of a right
      implementation meets it against its own rounding, and one that rounds h or gate/up otherwise
      (truncation, an extra cast) breaks it on most rows against every allowed rounding.
    - GEMM 2: ``|W2| e_h`` plus ``gamma_(I + r + 1) (|W2| |h| + |b2|)``.
    - un-permute: weights ``w_j`` (float32, exact on both sides) times the above, summed; float32 sum over k
      terms ``k u32``; the final cast ``u (|ref| + bound so far)`` (|ref| is the float64 reference output).
    """
    u32 = unit_roundoff("float32")
    dtype = str(x.dtype).replace("torch.", "")
    u = unit_roundoff(dtype)
    h_dtype = "float8_e4m3fn" if kind == "fp8" else dtype  # the last rounding of h before the down GEMM
    u_h = unit_roundoff(dtype)  # the coarsest store of h the contract allows: x's dtype
    extra = {"dense": 0, "int4": 2, "fp8": 4, "mxfp4": 2}[kind]
    b13 = None if w13_bias is None else np.abs(w13_bias.detach().cpu().double().numpy())
    b2 = None if w2_bias is None else np.abs(w2_bias.detach().cpu().double().numpy())
    b13_signed = None if w13_bias is None else w13_bias.detach().cpu().double().numpy()
    acc1 = accum_unit("float8_e4m3fn" if kind == "fp8" else dtype)
    acc2 = accum_unit(h_dtype)
    xs = x.detach().cpu().double().numpy()
    ids_np, wts = ids.detach().cpu().long().numpy(), weights.detach().cpu().double().numpy()
    num_tokens, hidden = xs.shape
    inter = int(w2.shape[-1])  # w2 [E, H, I] (an Int4Weight's shape is the dequantized one)
    bound = np.zeros((num_tokens, hidden))
    out_mag = np.zeros((num_tokens, hidden))
    a_all = fp8_act(xs) if kind == "fp8" else xs
    for e in np.unique(ids_np):
        tok, slot = np.nonzero(ids_np == e)
        a = a_all[tok]
        w13e, w2e = dequantized_expert(w13, e), dequantized_expert(w2, e)  # one expert at a time
        gu = a @ w13e.T
        gu_mag = np.abs(a) @ np.abs(w13e).T
        if b13 is not None:
            gu, gu_mag = gu + b13_signed[e], gu_mag + b13[e]
        e_gu = gamma(hidden + extra + (b13 is not None), acc1) * gu_mag
        if activation == "swiglu_oai":
            g = np.minimum(gu[:, 0::2], SWIGLU_OAI_LIMIT)
            up = np.clip(gu[:, 1::2], -SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT)
            e_g, e_up = e_gu[:, 0::2], e_gu[:, 1::2]
            s_g = g * sigmoid(SWIGLU_OAI_ALPHA * g)
            h = s_g * (up + 1.0)
            e_h = SILU_SLOPE_MAX * np.abs(up + 1.0) * e_g + np.abs(s_g) * e_up + SILU_SLOPE_MAX * e_g * e_up
            e_h += 2 * u32 * (np.abs(up) + 1.0) * np.abs(s_g)
        else:
            g, up, e_g, e_up = gu[:, :inter], gu[:, inter:], e_gu[:, :inter], e_gu[:, inter:]
            h = silu(g) * up
            e_h = SILU_SLOPE_MAX * np.abs(up) * e_g + np.abs(silu(g)) * e_up + SILU_SLOPE_MAX * e_g * e_up
        e_h += 16 * u32 * np.abs(h)
        h_in = np.abs(h)
        if kind == "fp8":
            if not strict:
                e_h = e_h + u_h * np.abs(h)  # h stored in x's dtype before it is quantized
            h_in = np.abs(fp8_act(h))
            starts = np.arange(0, inter, 128)
            amax = np.maximum.reduceat(np.abs(h), starts, axis=1)
            e_amax = np.maximum.reduceat(e_h, starts, axis=1)
            scale_move = np.repeat(e_amax / np.maximum(amax, 1e-300), 128, axis=1)[:, :inter]
            e_h = e_h + scale_move * np.abs(h)
        if not strict:
            e_h = e_h + 2 * unit_roundoff(h_dtype) * np.abs(h)
        y_mag = h_in @ np.abs(w2e).T
        if b2 is not None:
            y_mag = y_mag + b2[e]
        e_y = e_h @ np.abs(w2e).T + gamma(inter + extra + (b2 is not None), acc2) * y_mag
        wj = wts[tok, slot][:, None]
        np.add.at(bound, tok, wj * e_y)
        np.add.at(out_mag, tok, wj * y_mag)
    top_k = ids_np.shape[1]
    bound += top_k * u32 * out_mag + u32 * max(float(out_mag.max(initial=0.0)), 1e-30)
    return bound + u * (np.abs(ref) + bound)


def run_fused_moe(x, w13, w2, ids, weights, kind: str, fn=None, **kwargs):
    """``fn``'s output (default: this project's kernel), the float64 definition, its worst-case bound, and for
    each rounding of h the contract allows (``INTERMEDIATES``) the reference with h rounded so and its no-flip
    bound: ``(out, ref, bound, {label: (ref_rounded, strict)})``, references float64 numpy. ``kwargs``: the
    contract's keywords (``activation``, ``w13_bias``, ``w2_bias``), passed to all three."""
    if fn is None:

        fn = K.fused_moe
    out = fn(x, w13, w2, ids, weights, **kwargs)
    ref = R.fused_moe(x, w13, w2, ids, weights, **kwargs)
    bound = moe_error_bound(x, w13, w2, ids, weights, ref, kind, **kwargs)
    strict = {}
    for rounding in INTERMEDIATES:
        h_dtype = x.dtype if rounding == "input" else getattr(torch, rounding)
        ref_h = R.fused_moe(x, w13, w2, ids, weights, intermediate_dtype=h_dtype, **kwargs)
        label = f"h stored in {str(h_dtype).replace('torch.', '')}"
        if label in strict:  # x is float32: one rounding
            continue
        strict[label] = (ref_h, moe_error_bound(x, w13, w2, ids, weights, ref_h, kind, strict=True, **kwargs))
    return out, ref, bound, strict
