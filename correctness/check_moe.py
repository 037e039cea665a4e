"""``servekernels check`` cases for MoE and the grouped GEMMs, and the MoE inputs and error bound the parity
tests (``test_fused_moe.py``) share.

Expert counts, top-k and quantization formats are the models' own (Mixtral 8 x top-2, DeepSeek-V3-style fp8
128x128 blocks with top-8, a W4A16 GPTQ-style int4); hidden and intermediate sizes are scaled down (and kept off
tile multiples) so the MoE part runs in about a minute under the interpreter. Routing is skewed (a hot expert,
empty experts, a one-row expert) and every expert no token uses holds NaN.

fused_moe's tolerance is per element (``moe_error_bound``), so its rows in the table are in units of the
bound: ``out/bound`` (worst case: a rounding flip allowed on every element; must be <= 1 everywhere; its
"rel err" column is the plain ``max |out - ref| / max |ref|``) and ``flip rows`` (the fraction of output rows
over the no-flip bound; at most ``STRICT_ROW_FRACTION``).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from servekernels.check import Case, Result, compare

SILU_SLOPE_MAX = 1.1  # max |d silu / dx| = 1.0998...
STRICT_ROW_FRACTION = 0.05  # rows allowed over the no-flip bound (flips are rare, see moe_error_bound)
FP8_BLOCK = (128, 128)
INT4_GROUP = 32  # the parity tests' group (the catalogue's int4 case uses 128)


# ------------------------------------------------------------------------------------------------ inputs

def skewed_topk(num_tokens: int, num_experts: int, top_k: int, rng):
    """Skewed routing from ``skewed_router_logits`` (hot expert, cold experts that stay empty), then one
    token's last slot moved to a cold expert so that expert serves exactly one row. CPU int32 ids and float32
    weights (the reference router's, rounded once)."""
    import torch

    from correctness.moe_inputs import skewed_router_logits
    from kernels import reference as R

    logits = skewed_router_logits(num_tokens, num_experts, rng)
    ids, weights = R.route(logits, top_k)
    if num_tokens >= 2 and num_experts > top_k + 1:
        empty = np.setdiff1d(np.arange(num_experts), ids)
        if empty.size > 1:  # keep at least one expert empty: its NaN weights are the poison
            ids[num_tokens // 2, -1] = empty[0]  # a one-row expert
    return torch.from_numpy(ids), torch.from_numpy(weights.astype(np.float32))


def make_moe(num_tokens, hidden, inter, num_experts, top_k, dtype, kind, *, seed=0, zero_point=False,
             group_size=INT4_GROUP, device="cpu"):
    """x, w13, w2 (dense in ``dtype``, ``Int4Weight`` or ``Fp8Weight`` 128x128 blocks), topk_ids, topk_weights,
    all on ``device``; the weights of every expert no token is routed to are NaN (dense values, int4 scales,
    fp8 data)."""
    import torch

    from correctness.inputs import torch_dtype
    from correctness.moe_inputs import signed_activations, signed_weights
    from kernels import reference as R

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(signed_activations(num_tokens, hidden, rng)).to(torch_dtype(dtype))
    w13 = torch.from_numpy(signed_weights(num_experts, 2 * inter, hidden, rng)).float()
    w2 = torch.from_numpy(signed_weights(num_experts, hidden, inter, rng)).float()
    ids, weights = skewed_topk(num_tokens, num_experts, top_k, rng)
    unused = torch.from_numpy(np.setdiff1d(np.arange(num_experts), ids.numpy()))
    if kind == "int4":
        w13 = R.quantize_int4(w13, group_size=group_size, zero_point=zero_point)
        w2 = R.quantize_int4(w2, group_size=group_size, zero_point=zero_point)
        for w in (w13, w2):
            w.scales[unused] = float("nan")
    elif kind == "fp8":
        w13, w2 = R.quantize_fp8(w13, "block", FP8_BLOCK), R.quantize_fp8(w2, "block", FP8_BLOCK)
        for w in (w13, w2):
            w.data[unused] = float("nan")
    else:
        w13, w2 = w13.to(torch_dtype(dtype)), w2.to(torch_dtype(dtype))
        w13[unused] = float("nan")
        w2[unused] = float("nan")
    return (x.to(device), _to(w13, device), _to(w2, device), ids.to(device), weights.to(device))


def _to(w, device):
    """A dense tensor, or every tensor field of an Int4Weight / Fp8Weight, on ``device``."""
    if not dataclasses.is_dataclass(w):
        return w.to(device)
    return dataclasses.replace(w, **{f.name: getattr(w, f.name).to(device) for f in dataclasses.fields(w)
                                     if hasattr(getattr(w, f.name), "to")})


# ------------------------------------------------------------------------------------------------ tolerance

def _accum_unit(operand_dtype: str) -> float:
    """float32 accumulation: u32 (interpreter, or a GPU's CUDA cores); inside a tensor-core MMA the GPU keeps
    fewer bits (``GPU_ACCUM_UNIT``, 2**-14 for fp8 on Hopper)."""
    from correctness.tolerances import unit_roundoff
    from correctness.tolerances_gemm import GPU_ACCUM_UNIT
    from kernels.runtime import interpreter_enabled

    return unit_roundoff("float32") if interpreter_enabled() else GPU_ACCUM_UNIT[operand_dtype]


def moe_error_bound(x, w13, w2, ids, weights, ref, kind: str, *, strict: bool = False) -> np.ndarray:
    """Per-element bound ``[T, H]`` on |kernel - reference|, first order in the roundings, from the magnitudes.

    Per (token, slot) pair routed to expert e, with ``a`` the GEMM input as both sides see it:
    - GEMM 1: float32 accumulation over H terms, ``gamma_(H + r) |W13| |a|`` (r extra roundings: 2 for the int4
      group scale on each float32 partial, 4 for the fp8 block and activation scales). Every weight enters the
      MMA exactly (dense in its dtype; int4 as the small integers nibble - z; e4m3 x e4m3 products are exact
      in float32), so there is no weight rounding.
    - ``h = silu(g) * up`` moves by ``1.1 |up| e_g + |silu(g)| e_up + 1.1 e_g e_up`` plus ``16 u32 |h|`` for its
      float32 evaluation (exp: 2**-22 relative on a GPU). For fp8, the quantization scale of each 128-group
      moves with its amax (relative ``e_h / amax``) and moves every element of the group that much. Rounding
      h to its storage dtype (and the fp8 quantization) is modelled by the reference; where the kernel's value
      and the exact one straddle a rounding boundary the two roundings *flip*: they differ by up to 2 u_h |h|
      (2 u_fp8 |h| for fp8, one e4m3 step). The full bound allows a flip on every element (worst case);
      ``strict=True`` allows none: with e_h ~ 1e-7 |h| a flip is rare (~ e_h / (u_h |h|) per element), so
      nearly every row meets it, and a kernel that rounds h or gate/up differently (truncation, an extra cast)
      breaks it on most rows.
    - GEMM 2: ``|W2| e_h`` plus ``gamma_(I + r) |W2| |h|``.
    - un-permute: weights ``w_j`` (float32, exact on both sides) times the above, summed; float32 sum over k
      terms ``k u32``; the final cast ``u (|ref| + bound so far)`` (|ref| is the float64 reference output).
    """
    from correctness.tolerances import unit_roundoff
    from correctness.tolerances_gemm import gamma
    from kernels.reference.moe import dequantized, fp8_act, silu
    from kernels.triton.moe import intermediate_dtype

    u32 = unit_roundoff("float32")
    dtype = str(x.dtype).replace("torch.", "")
    u = unit_roundoff(dtype)
    h_dtype = str(intermediate_dtype(kind, x.dtype)).replace("torch.", "")
    u_h = unit_roundoff(h_dtype)
    extra = {"dense": 0, "int4": 2, "fp8": 4}[kind]
    acc1 = _accum_unit("float8_e4m3fn" if kind == "fp8" else dtype)
    acc2 = _accum_unit("float8_e4m3fn" if kind == "fp8" else h_dtype)
    xs = x.detach().cpu().double().numpy()
    w13d, w2d = dequantized(w13), dequantized(w2)
    ids_np, wts = ids.detach().cpu().long().numpy(), weights.detach().cpu().double().numpy()
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
        e_gu = gamma(hidden + extra, acc1) * (np.abs(a) @ np.abs(w13e).T)
        g, up, e_g, e_up = gu[:, :inter], gu[:, inter:], e_gu[:, :inter], e_gu[:, inter:]
        h = silu(g) * up
        e_h = SILU_SLOPE_MAX * np.abs(up) * e_g + np.abs(silu(g)) * e_up + SILU_SLOPE_MAX * e_g * e_up
        e_h += 16 * u32 * np.abs(h)
        h_in = np.abs(h)
        if kind == "fp8":
            h_in = np.abs(fp8_act(h))
            starts = np.arange(0, inter, 128)
            amax = np.maximum.reduceat(np.abs(h), starts, axis=1)
            e_amax = np.maximum.reduceat(e_h, starts, axis=1)
            scale_move = np.repeat(e_amax / np.maximum(amax, 1e-300), 128, axis=1)[:, :inter]
            e_h = e_h + scale_move * np.abs(h)
        if not strict:
            e_h = e_h + 2 * (unit_roundoff("float8_e4m3fn") if kind == "fp8" else u_h) * np.abs(h)
        y_mag = h_in @ np.abs(w2e).T
        e_y = e_h @ np.abs(w2e).T + gamma(inter + extra, acc2) * y_mag
        wj = wts[tok, slot][:, None]
        np.add.at(bound, tok, wj * e_y)
        np.add.at(out_mag, tok, wj * y_mag)
    top_k = ids_np.shape[1]
    bound += top_k * u32 * out_mag + u32 * max(float(out_mag.max(initial=0.0)), 1e-30)
    return bound + u * (np.abs(ref) + bound)


def run_fused_moe(x, w13, w2, ids, weights, kind: str):
    """Kernel and reference outputs and both bounds: ``(out, ref, bound, strict)``, ``ref`` float64 numpy."""
    from kernels import reference as R
    from kernels import triton as K
    from kernels.triton.moe import intermediate_dtype

    out = K.fused_moe(x, w13, w2, ids, weights)
    ref = R.fused_moe(x, w13, w2, ids, weights, intermediate_dtype=intermediate_dtype(kind, x.dtype))
    bound = moe_error_bound(x, w13, w2, ids, weights, ref, kind)
    strict = moe_error_bound(x, w13, w2, ids, weights, ref, kind, strict=True)
    return out, ref, bound, strict


# ------------------------------------------------------------------------------------------------ cases

def _device() -> str:
    from kernels.runtime import default_device

    return default_device()


# name -> (T, H, I, E, top_k, dtype, kind, make_moe kwargs)
MOE = {
    "mixtral-8x7b-like/moe-prefill": (96, 256, 352, 8, 2, "bfloat16", "dense", {}),
    "mixtral-8x7b-like/moe-decode": (1, 256, 352, 8, 2, "bfloat16", "dense", {}),
    "deepseek-v3-like/moe-fp8-prefill": (64, 384, 160, 32, 8, "bfloat16", "fp8", {}),
    "deepseek-v3-like/moe-fp8-decode": (1, 384, 160, 32, 8, "bfloat16", "fp8", {}),
    "mixtral-8x7b-like/moe-int4-g128": (48, 256, 384, 8, 2, "float16", "int4", dict(group_size=128, zero_point=True)),
}


def _moe_case(name, t, h, i, e, k, dtype, kind, kwargs):
    def run():
        from correctness.assertions import max_rel_err

        started = time.perf_counter()
        x, w13, w2, ids, weights = make_moe(t, h, i, e, k, dtype, kind, seed=len(name), device=_device(), **kwargs)
        out, ref, bound, strict = run_fused_moe(x, w13, w2, ids, weights, kind)
        got = out.detach().cpu().double().numpy()
        label = dtype if kind == "dense" else f"{dtype}/{kind}"
        over = (np.abs(got - ref) > strict).any(axis=1)
        frac = float(over.mean()) if over.size else 0.0
        # out/bound: max |out - ref| / bound (<= 1); its rel err column is the plain max |out - ref| / max |ref|
        scaled = compare(name, "out/bound", label, got / bound, ref / bound, 1.0, started)
        scaled.max_rel_err = max_rel_err(got, ref)
        flips = Result(name, "flip rows", label, frac, STRICT_ROW_FRACTION, frac, time.perf_counter() - started,
                       f"{name}: {int(over.sum())} of {over.size} rows over the no-flip bound" if frac > 0 else "")
        return [scaled, flips]

    return Case(name, run)


# name -> (T, E, N, K, act dtype, kind)
GEMM = {
    "mixtral-8x7b-like/grouped-gemm-bf16": (160, 8, 200, 256, "bfloat16", "dense"),
    "mixtral-8x7b-like/grouped-gemm-int4-g128": (160, 8, 200, 256, "float16", "int4"),
    "deepseek-v3-like/grouped-gemm-fp8-block": (160, 16, 200, 384, "bfloat16", "fp8"),
}


def _gemm_case(name, t, e, n, k, dtype, kind):
    """One grouped GEMM on skewed groups (``make_grouped_gemm_inputs``), tolerance from ``grouped_gemm_tol``
    (float32 accumulation bound plus the output cast, the latter as ``rtol * max|y|``)."""

    def run():
        import torch

        from correctness.moe_inputs import make_grouped_gemm_inputs
        from correctness.tolerances_gemm import grouped_gemm_tol
        from kernels import reference as R
        from kernels import triton as K
        dev = _device()
        inp = make_grouped_gemm_inputs(t, e, n, k, dtype, seed=len(name), device=dev)
        offs = inp.group_offsets
        started = time.perf_counter()
        if kind == "dense":
            w = inp.w.to(inp.a.dtype)
            y = K.grouped_gemm(inp.a, w, offs, out_dtype=torch.bfloat16)
            ref = R.grouped_gemm(inp.a, w, offs, out_dtype=torch.bfloat16)
            tol = grouped_gemm_tol(inp.a, w, offs.cpu().numpy(), torch.bfloat16, accum_unit=_accum_unit(dtype))
            label = "bfloat16"
        elif kind == "int4":
            w = K.quantize_int4(inp.w, group_size=128, zero_point=False)
            y = K.grouped_gemm_int4(inp.a, w, offs)
            ref = R.grouped_gemm_int4(inp.a, w, offs)
            tol = grouped_gemm_tol(inp.a, R.dequantize_int4(w), offs.cpu().numpy(), inp.a.dtype, extra_roundings=2,
                                   accum_unit=_accum_unit(dtype))
            label = f"{dtype}/int4"
        else:
            w = K.quantize_fp8(inp.w, "block", FP8_BLOCK)
            a_fp8, a_scales = K.quantize_fp8_act(inp.a, 128)
            y = K.grouped_gemm_fp8(a_fp8, a_scales, w, offs, out_dtype=torch.bfloat16)
            ref = R.grouped_gemm_fp8(a_fp8, a_scales, w, offs, out_dtype=torch.bfloat16)
            a_deq = a_fp8.cpu().double().numpy() * np.repeat(a_scales.cpu().double().numpy(), 128, axis=1)[:, :k]
            tol = grouped_gemm_tol(a_deq, R.dequantize_fp8(w), offs.cpu().numpy(), torch.bfloat16,
                                   extra_roundings=4, accum_unit=_accum_unit("float8_e4m3fn"))
            label = "bfloat16/fp8"
        atol = tol["atol"] + tol["rtol"] * float(np.abs(ref).max(initial=0.0))
        return [compare(name, "y", label, y.cpu(), ref, atol, started)]

    return Case(name, run)


def cases() -> list[Case]:
    out = [_moe_case(n, *spec) for n, spec in MOE.items()]
    out += [_gemm_case(n, *spec) for n, spec in GEMM.items()]
    return out
