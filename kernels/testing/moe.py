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
from kernels.reference.moe import dequantized_expert, fp8_act, silu
from kernels.testing.gemm import accum_unit, quantize_on_device
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
    else:
        w13, w2 = w13.to(device, torch_dtype(dtype)), w2.to(device, torch_dtype(dtype))
        w13[unused] = float("nan")
        w2[unused] = float("nan")
    return (x.to(device), w13, w2, ids.to(device), weights.to(device))


# ------------------------------------------------------------------------------------------------ tolerance

def moe_error_bound(x, w13, w2, ids, weights, ref, kind: str, *, strict: bool = False) -> np.ndarray:
    """Per-element bound ``[T, H]`` on |kernel - reference|, first order in the roundings, from the magnitudes.

    Per (token, slot) pair routed to expert e, with ``a`` the GEMM input as both sides see it:
    - GEMM 1: float32 accumulation over H terms, ``gamma_(H + r) |W13| |a|`` (r extra roundings: 2 for the int4
      group scale on each float32 partial, 4 for the fp8 block and activation scales). Every weight enters the
      MMA exactly (dense in its dtype; int4 as the small integers nibble - z; e4m3 x e4m3 products are exact
      in float32), so there is no weight rounding.
    - ``h = silu(g) * up`` moves by ``1.1 |up| e_g + |silu(g)| e_up + 1.1 e_g e_up`` plus ``16 u32 |h|`` for its
      float32 evaluation (exp: 2**-22 relative on a GPU). For fp8, the quantization scale of each 128-group
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
    - GEMM 2: ``|W2| e_h`` plus ``gamma_(I + r) |W2| |h|``.
    - un-permute: weights ``w_j`` (float32, exact on both sides) times the above, summed; float32 sum over k
      terms ``k u32``; the final cast ``u (|ref| + bound so far)`` (|ref| is the float64 reference output).
    """
    u32 = unit_roundoff("float32")
    dtype = str(x.dtype).replace("torch.", "")
    u = unit_roundoff(dtype)
    h_dtype = "float8_e4m3fn" if kind == "fp8" else dtype  # the last rounding of h before the down GEMM
    u_h = unit_roundoff(dtype)  # the coarsest store of h the contract allows: x's dtype
    extra = {"dense": 0, "int4": 2, "fp8": 4}[kind]
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
        e_gu = gamma(hidden + extra, acc1) * (np.abs(a) @ np.abs(w13e).T)
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
        e_y = e_h @ np.abs(w2e).T + gamma(inter + extra, acc2) * y_mag
        wj = wts[tok, slot][:, None]
        np.add.at(bound, tok, wj * e_y)
        np.add.at(out_mag, tok, wj * y_mag)
    top_k = ids_np.shape[1]
    bound += top_k * u32 * out_mag + u32 * max(float(out_mag.max(initial=0.0)), 1e-30)
    return bound + u * (np.abs(ref) + bound)


def run_fused_moe(x, w13, w2, ids, weights, kind: str, fn=None):
    """``fn``'s output (default: this project's kernel), the float64 definition, its worst-case bound, and for
    each rounding of h the contract allows (``INTERMEDIATES``) the reference with h rounded so and its no-flip
    bound: ``(out, ref, bound, {label: (ref_rounded, strict)})``, references float64 numpy."""
    if fn is None:

        fn = K.fused_moe
    out = fn(x, w13, w2, ids, weights)
    ref = R.fused_moe(x, w13, w2, ids, weights)
    bound = moe_error_bound(x, w13, w2, ids, weights, ref, kind)
    strict = {}
    for rounding in INTERMEDIATES:
        h_dtype = x.dtype if rounding == "input" else getattr(torch, rounding)
        ref_h = R.fused_moe(x, w13, w2, ids, weights, intermediate_dtype=h_dtype)
        label = f"h stored in {str(h_dtype).replace('torch.', '')}"
        if label in strict:  # x is float32: one rounding
            continue
        strict[label] = (ref_h, moe_error_bound(x, w13, w2, ids, weights, ref_h, kind, strict=True))
    return out, ref, bound, strict
