"""``fused_moe``: route-permute-GEMM-SiLU-GEMM-unpermute over a stack of experts (see docs/contract.md).

Inputs: ``kernels.testing.moe.make_moe`` (signed activations with outlier channels; skewed routing with a hot
expert, empty experts and a one-row expert, or the catalogue's routing at a named report shape; every expert
no token uses holds NaN weights). Tolerance per element: ``moe_error_bound`` (first order in every rounding
of the two GEMMs, the activation, the intermediate's storage or fp8 re-quantization and the un-permute), against
the float64 definition (``h`` unrounded), admitting ``h`` kept in float32 or stored in x's dtype. The stricter
no-flip criterion compares against the reference with ``h`` rounded each allowed way and asks that one of them
hold, so it lives in the parity tests (``correctness/test_fused_moe.py``).

Counted traffic (``full_size_count``): the report counts fused_moe again at its full shape, uncapped, running a
stratified sample of each launch's programs (``roofline.report_counting.count_full``); the small shape only
judges parity. Every counted launch is then one of the full plan's (w13, SiLU, w2 with its K slices' float32
partials, ``_sum_splits_kernel``, un-permute), so ``t_model`` pairs each full-size launch with its own counted
bytes. Not the small shape with the full split forced: its w2 K (I = 128, one scale unit) cannot split, and a
split's partials (``2 S T N`` floats) next to small weights would overstate the ratio scaled to full size. Not
a capped K as for grouped GEMMs: each GEMM's K is the other's N (H, I), so capping one changes the other's
grid. The cost is interpreter time: about 50 s for Mixtral int4 at T = 16 on this host (w2's 7168-long K slices).

gpt-oss (MXFP4 weights, ``weight_format="mxfp4"``): the scales sit in a 255-padded buffer (a scale read past a
row's end is NaN; unused experts' scales are 255), both GEMMs have a float32 bias (``moe_biases``: NaN for unused
experts; w13's wide enough that ``swiglu_oai``'s clamps act) and ``activation="swiglu_oai"`` (the shape's
``activation``); its routing is top-4 renormalised (gpt-oss's softmax over the chosen logits).
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from kernels.ops.models import GPT_OSS_20B, GPT_OSS_120B, MIXTRAL, MOE_PREFILL_COUNT_TOKENS, QWEN3_MOE, moe_shape
from kernels.ops.route import DEEPSEEK_V3
from kernels.reference.quant import MX_BLOCK, Fp8Weight, Int4Weight, Mxfp4Weight
from roofline import cost as C

KIND = {"bf16": "dense", "dense": "dense", "int4": "int4", "fp8": "fp8", "mxfp4": "mxfp4"}
DEEPSEEK_V3_MOE = dict(experts=256, hidden=7168, intermediate=2048, top_k=8)  # its routed experts
# the routers a catalogue case may name (its shape's "router"): route's keywords
ROUTERS = {"deepseek-v3": DEEPSEEK_V3, "deepseek-v3-small": dict(DEEPSEEK_V3, experts=32)}


def catalogue_routing(tokens: int, experts: int, top_k: int, seed: int = 0, router: str | None = None,
                      renormalize: bool = False):
    """The report's skewed routing as (topk_ids int32 [T, k], topk_weights float32 [T, k]); the same ids as
    ``kernels.ops.models.expert_counts`` with the same seed. Weights: the softmax over all E logits at the k
    chosen, not renormalised (as DeepSeek-V2 and Qwen2-MoE routers give them): they sum to less than 1, so a
    fused_moe that renormalises the weights itself fails the report's parity (the traffic does not depend on them).
    ``router="deepseek-v3"``: the same logits through DeepSeek-V3's router (``kernels/ops/route.py``: sigmoid, a
    selection bias, 4 of 8 groups, weights renormalised and scaled by 2.5, so they sum to 2.5).
    ``renormalize=True`` (without a router): the k weights divided by their sum (gpt-oss, Mixtral)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((tokens, experts)) + rng.standard_normal(experts)[None, :]
    if router is not None:
        return _routed(logits, top_k, ROUTERS[router], rng)
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = np.take_along_axis(probs, ids, axis=1)
    if renormalize:
        chosen = chosen / chosen.sum(axis=1, keepdims=True)
    return ids.astype(np.int32), chosen.astype(np.float32)


def _routed(logits, top_k: int, router: dict, rng):
    """``route`` (the float64 reference) on ``logits`` with a named router's keywords; a bias drawn from ``rng``."""
    from kernels.reference.routing import route  # numpy only

    kwargs = {k: v for k, v in router.items() if k not in ("experts", "top_k", "correction_bias")}
    if router.get("correction_bias"):
        kwargs["correction_bias"] = rng.uniform(-0.25, 0.25, logits.shape[1]).astype(np.float32)
    ids, weights = route(logits, top_k, **kwargs)
    return ids, weights.astype(np.float32)


def routed_shape(tokens: int, router: str, **moe) -> dict:
    """A ``fused_moe`` shape whose expert counts come from a named router (``ROUTERS``) on the catalogue's logits."""
    shape = moe_shape(tokens, **moe)
    ids, _ = catalogue_routing(tokens, moe["experts"], moe["top_k"], router=router)
    counts = [int(c) for c in np.bincount(ids.ravel(), minlength=moe["experts"])]
    return dict(shape, router=router, expert_counts=counts, active_experts=sum(1 for c in counts if c))


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    import torch  # deferred: the registry loads no torch

    from kernels.testing.moe import make_moe  # deferred: the registry loads no torch

    kind = KIND[shape["weight_format"]]
    routing = None
    if shape.get("expert_counts") is not None:
        ids, wts = catalogue_routing(shape["tokens"], shape["experts"], shape["top_k"], router=shape.get("router"),
                                     renormalize=shape.get("renormalize", False))
        routing = (torch.from_numpy(ids), torch.from_numpy(wts))
    extra = {"group_size": shape["group_size"]} if kind == "int4" and shape.get("group_size") else {}
    args = make_moe(shape["tokens"], shape["hidden"], shape["intermediate"], shape["experts"], shape["top_k"],
                    shape["dtype"], kind, seed=seed, zero_point=shape.get("zero_point", False), device=device,
                    routing=routing, renormalize=shape.get("renormalize", True), **extra)
    kwargs = {"activation": shape["activation"]} if shape.get("activation", "silu") != "silu" else {}
    if shape.get("bias", kind == "mxfp4"):
        from kernels.testing.moe import moe_biases  # deferred: the registry loads no torch

        kwargs["w13_bias"], kwargs["w2_bias"] = moe_biases(shape["experts"], shape["hidden"], shape["intermediate"],
                                                           args[3], seed=seed, device=device)
    return Inputs("fused_moe", shape, args, kwargs, kind)


def call(fn, inputs: Inputs) -> dict:
    return {"out": fn(*inputs.args, **inputs.kwargs)}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.moe import moe_error_bound  # deferred: the registry loads no torch

    x, w13, w2, ids, wts = inputs.args
    return {"out": moe_error_bound(x, w13, w2, ids, wts, expected["out"], inputs.data, **inputs.kwargs)}


def diagnose(inputs: Inputs, output: str, actual, expected, tol) -> str:
    """A failing ``out`` in tokens, experts and columns, and the planted bug it matches (renormalised weights, ...)."""
    from kernels.testing.diagnosis_experts import fused_moe  # deferred: the registry loads no torch

    return fused_moe(inputs, output, actual, expected, tol)


def out_dtypes(inputs: Inputs) -> dict:
    return {"out": inputs.args[0].dtype}


def draw(rng) -> dict:
    """9 to 40 tokens, top-2 of 8 dense bfloat16 experts (hidden 256, intermediate 128 or 192)."""
    return _shape(rng.randint(9, 40), 256, rng.choice((128, 192)), 8, 2, "bfloat16", "dense")


def features(args, kwargs) -> set:
    w = args[1]
    fmt = ("int4" if isinstance(w, Int4Weight) else "fp8" if isinstance(w, Fp8Weight)
           else "mxfp4" if isinstance(w, Mxfp4Weight) else "dense")
    feats = {f"weights={fmt}", f"dtype={str(args[0].dtype).replace('torch.', '')}"}
    # the keyword-named features (a provider declining one need not take the keyword)
    feats |= {name for name in ("w13_bias", "w2_bias") if kwargs.get(name) is not None}
    if kwargs.get("activation", "silu") != "silu":
        feats.add(f"activation={kwargs['activation']}")
    if fmt == "int4" and getattr(w, "zeros", None) is not None:
        feats.add("int4_zero_point")
    if kwargs.get("batch_invariant"):
        feats.add("batch_invariant")
    return feats


def cost(s: dict):
    return C.fused_moe(s["tokens"], s["hidden"], s["intermediate"], s["expert_counts"], s["top_k"],
                       weight_format=s["weight_format"], dtype=s["dtype"], group_size=s["group_size"] or 128)


def cases() -> list:
    M, Q, _moe = MIXTRAL, QWEN3_MOE, moe_shape
    out = [Case("fused_moe", f"mixtral/moe-{fmt}/t{t}", _moe(t, **M, weight_format=fmt),
                _moe(min(t, 6) if t <= 16 else MOE_PREFILL_COUNT_TOKENS, experts=8, hidden=256, intermediate=128,
                     top_k=2, weight_format=fmt), quick, tracked=(fmt, t) == ("fp8", 16))
           for fmt, t, quick in (("bf16", 16, False), ("int4", 16, True), ("fp8", 16, False), ("int4", 1024, False))]
    out.append(Case("fused_moe", "qwen3-30b-a3b/moe-fp8/t64", _moe(64, **Q, weight_format="fp8"),
                    _moe(4, experts=16, hidden=256, intermediate=128, top_k=8, weight_format="fp8")))
    # DeepSeek-V3's routed experts (fp8 128 x 128 blocks) behind its router; counted at the small shape (its
    # full-size weights, 11 GB of fp8, do not fit a count on this host), 32 experts in 8 groups there
    out.append(Case("fused_moe", "deepseek-v3/moe", routed_shape(16, "deepseek-v3", **DEEPSEEK_V3_MOE,
                                                                 weight_format="fp8"),
                    routed_shape(4, "deepseek-v3-small", experts=32, hidden=256, intermediate=128, top_k=8,
                                 weight_format="fp8"), full_count=False))
    # gpt-oss: MXFP4 experts with biases, swiglu_oai, top-4 renormalised; counted at small H = I (the full
    # shape's E and top-4), judged there too
    oss = dict(activation="swiglu_oai", renormalize=True)
    for name, model, small_e in (("gpt-oss-20b", GPT_OSS_20B, 32), ("gpt-oss-120b", GPT_OSS_120B, 128)):
        out.append(Case("fused_moe", f"{name}/moe-mxfp4/t16", dict(_moe(16, **model, weight_format="mxfp4"), **oss),
                        dict(_moe(4, experts=small_e, hidden=256, intermediate=128, top_k=4, weight_format="mxfp4"),
                             **oss), tracked=name == "gpt-oss-120b"))
    return out


def full_inputs(s: dict, big, stride0: bool) -> tuple[tuple, dict]:
    """``fused_moe`` at full size: real activations and routing (the catalogue's skewed router), weights built
    by ``big`` (stride 0: nothing may execute the expert GEMMs on them)."""
    import torch  # deferred: the registry loads no torch


    t, h, inter, e, k = s["tokens"], s["hidden"], s["intermediate"], s["experts"], s["top_k"]
    ids, wts = catalogue_routing(t, e, k, router=s.get("router"))
    x = torch.zeros((t, h), dtype=torch.bfloat16)

    def weight(n, kk):
        if s["weight_format"] == "int4":
            g = s["group_size"]
            return Int4Weight(big((e, n, kk // 2), torch.uint8), big((e, n, kk // g), torch.float32), None, g)
        if s["weight_format"] == "fp8":
            return Fp8Weight(big((e, n, kk), torch.float8_e4m3fn),
                             big((e, -(-n // 128), -(-kk // 128)), torch.float32), "block", (128, 128))
        if s["weight_format"] == "mxfp4":
            return Mxfp4Weight(big((e, n, kk // 2), torch.uint8), big((e, n, kk // MX_BLOCK), torch.uint8))
        return big((e, n, kk), torch.bfloat16)

    kwargs = {"activation": s["activation"]} if s.get("activation", "silu") != "silu" else {}
    if s.get("bias", s["weight_format"] == "mxfp4"):
        kwargs.update(w13_bias=torch.zeros((e, 2 * inter)), w2_bias=torch.zeros((e, h)))
    return (x, weight(2 * inter, h), weight(h, inter), torch.from_numpy(ids), torch.from_numpy(wts)), kwargs


def row_shape(s: dict) -> dict:
    """A report row's MoE shape, in the GEMM columns' terms (w13: N = 2I, K = H) plus its own."""
    return dict(tokens=s["tokens"], n=2 * s["intermediate"], k=s["hidden"], experts=s["experts"],
                group_size=s["group_size"], hidden=s["hidden"], intermediate=s["intermediate"],
                top_k=s["top_k"], weight_format=s["weight_format"], active_experts=s["active_experts"])


def launch_case(device, kind: str) -> tuple[tuple, dict, dict]:
    """A small ``fused_moe`` for the launch-path tests (``OpSpec.launch_cases``): 7 tokens over 6 experts,
    skewed routing, dense bf16, int4 or fp8 weights."""
    import torch  # deferred: the registry loads no torch

    from kernels.testing.moe_inputs import launch_routing  # deferred: the registry loads no torch
    from kernels.triton import quant as Q  # deferred: the registry loads no torch

    _, ids, weights = launch_routing(device)
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((7, 256)) * 0.5).to(device, torch.bfloat16)
    w13 = torch.from_numpy(rng.standard_normal((6, 256, 256)) * 0.05).to(device, torch.float32)
    w2 = torch.from_numpy(rng.standard_normal((6, 256, 128)) * 0.05).to(device, torch.float32)
    kwargs = {}
    if kind == "int4":
        w13, w2 = Q.quantize_int4(w13, 128), Q.quantize_int4(w2, 128)
    elif kind == "fp8":
        w13, w2 = Q.quantize_fp8(w13), Q.quantize_fp8(w2)
    elif kind == "mxfp4":
        from kernels.testing.moe import moe_biases  # deferred: the registry loads no torch

        w13, w2 = Q.quantize_mxfp4(w13), Q.quantize_mxfp4(w2)
        b13, b2 = moe_biases(6, 256, 128, ids, device=device)
        kwargs = {"activation": "swiglu_oai", "w13_bias": b13, "w2_bias": b2}
    else:
        w13, w2 = w13.to(torch.bfloat16), w2.to(torch.bfloat16)
    return (x, w13, w2, ids, weights), kwargs, {}


def _shape(t, h, i, e, k, dtype, fmt, **extra) -> dict:
    return dict(tokens=t, hidden=h, intermediate=i, experts=e, top_k=k, dtype=dtype, weight_format=fmt, **extra)


INVARIANCE = "kernels.testing.invariance"
# the weight formats its invariance properties run on (kernels.testing.invariance builds mxfp4 weights dense yet)
MOE_KINDS = ("dense", "int4", "fp8", "mxfp4")

SPEC = OpSpec(
    name="fused_moe",
    summary="fused MoE: dense, int4 (W4A16), fp8 block-scaled or MXFP4 (biases, swiglu_oai) experts, top-k",
    reference="kernels.reference.moe:fused_moe",
    kernel="kernels.triton.ops.fused_moe:fused_moe",
    torch="kernels.torch_eager:fused_moe",
    outputs=("out",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features, full_size_count=True,
    full_inputs=full_inputs, row_shape=row_shape, style=("*", "tab:pink"),
    launch_cases={kind: (lambda device, kind=kind: launch_case(device, kind or "dense"))
                  for kind in ("", "int4", "fp8", "mxfp4")},
    shape=ShapeSchema({"tokens": "tokens T", "hidden": "H", "intermediate": "I", "experts": "E", "top_k": "k",
                       "dtype": "x's (and the output's) dtype",
                       "weight_format": "'dense'/'bf16', 'int4', 'fp8' or 'mxfp4'"},
                      {"group_size": "int4 quantization group", "zero_point": "int4 zero points",
                       "expert_counts": "(token, slot) pairs per expert of the catalogue's routing",
                       "active_experts": "experts with at least one pair",
                       "router": "the catalogue's router (ROUTERS: 'deepseek-v3'); default a skewed softmax top-k",
                       "renormalize": "False: the router's top-k weights are not renormalised (DeepSeek-V2, "
                                      "Qwen2-MoE): they sum to less than 1, so a fused_moe that renormalises fails",
                       "activation": "'silu' (default) or 'swiglu_oai' (gpt-oss)",
                       "bias": "w13_bias and w2_bias given (default: for mxfp4 weights)"}),
    out_dtypes=out_dtypes, draw=draw, diagnose=diagnose,
    keywords={"activation": "",
              "w13_bias": "",
              "w2_bias": "",
              "intermediate_dtype": "the reference's own (models a kernel's rounding of h in parity tests)",
              "batch_invariant": "changes bits only, within tolerance (its own properties: test_invariance.py)"},
    reference_keywords=("intermediate_dtype",),
    check={
        "mixtral-8x7b-like/moe-prefill": _shape(96, 256, 352, 8, 2, "bfloat16", "dense"),
        "mixtral-8x7b-like/moe-decode": _shape(1, 256, 352, 8, 2, "bfloat16", "dense"),
        "deepseek-v3-like/moe-fp8-prefill": _shape(64, 384, 160, 32, 8, "bfloat16", "fp8"),
        "deepseek-v3-like/moe-fp8-decode": _shape(1, 384, 160, 32, 8, "bfloat16", "fp8"),
        "mixtral-8x7b-like/moe-int4-g128": _shape(48, 256, 384, 8, 2, "float16", "int4", group_size=128,
                                                  zero_point=True),
        "qwen2-moe-like/moe-unnormalized-weights": _shape(32, 256, 128, 16, 4, "bfloat16", "dense",
                                                          renormalize=False),
        # gpt-oss: MXFP4 experts, both biases, swiglu_oai; H = 96 and I = 160 (3 and 5 MX blocks; w13's N = 2I = 320
        # and w2's N = 96 off the GEMM's N tile)
        "gpt-oss-20b-like/moe-mxfp4-swiglu-oai": _shape(8, 96, 160, 32, 4, "bfloat16", "mxfp4",
                                                        activation="swiglu_oai"),
        "gpt-oss-120b-like/moe-mxfp4-decode": _shape(2, 96, 64, 128, 4, "bfloat16", "mxfp4",
                                                     activation="swiglu_oai"),
    },
    invariance=(*(Invariance(f"fused_moe {k} token alone vs batch", f"{INVARIANCE}:moe_token_alone_vs_batch",
                             args=(("kind", k),)) for k in MOE_KINDS),
                *(Invariance(f"fused_moe {k} row order within expert", f"{INVARIANCE}:moe_token_order",
                             args=(("kind", k),)) for k in MOE_KINDS)),
)
