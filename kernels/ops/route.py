"""``route``: an MoE router's top-k experts and their weights, from the router logits (see docs/contract.md).

One function covers Mixtral (softmax over E, top-k, renormalised), Qwen-MoE and DeepSeek-V2-Lite (softmax weights
not renormalised), DeepSeek-V2 (softmax, group-limited top-6, a scaling factor), DeepSeek-V3/R1 and Kimi K2
(sigmoid scores, a selection bias, group-limited top-8, a scaling factor).

Inputs: ``kernels.testing.routing.router_inputs`` (a per-expert skew and a hot expert; an exact tie at the k-th
expert, with groups an exact tie between the last kept group and the best dropped one, one token with a NaN
logit; every two distinct float64 choice scores of a row at least the float32 error apart, so the ids have one
right answer at any precision the contract allows). Tolerances: ids exact, except in a token whose logits hold
NaN (any k distinct ids in ``[0, E)``: the extra check); weights ``weights_atol`` (the float32 error of the
chosen scores, their sum, the division and the scaling factor), against the float64 reference.
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from roofline import cost as C

CALL = ("renormalize", "scoring", "correction_bias", "num_groups", "topk_groups", "routed_scaling_factor")
DEFAULTS = {"renormalize": True, "scoring": "softmax", "correction_bias": None, "num_groups": None,
            "topk_groups": None, "routed_scaling_factor": 1.0}

# the routers of real models, as route's keywords
MIXTRAL = dict(experts=8, top_k=2)
QWEN15_MOE = dict(experts=60, top_k=4, renormalize=False)  # Qwen1.5-MoE-A2.7B: norm_topk_prob False
DEEPSEEK_V2 = dict(experts=160, top_k=6, renormalize=False, num_groups=8, topk_groups=3,
                   routed_scaling_factor=16.0)  # softmax, group-limited greedy
DEEPSEEK_V3 = dict(experts=256, top_k=8, scoring="sigmoid", correction_bias=True, num_groups=8, topk_groups=4,
                   routed_scaling_factor=2.5)  # noaux_tc: sigmoid, the selection bias, 4 of 8 groups
KIMI_K2 = dict(experts=384, top_k=8, scoring="sigmoid", correction_bias=True, num_groups=1, topk_groups=1,
               routed_scaling_factor=2.827)


def _shape(tokens, dtype="float32", **router) -> dict:
    return dict(tokens=tokens, dtype=dtype, **router)


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    import torch  # deferred: the registry loads no torch

    from kernels.testing.paged import torch_dtype  # deferred: the registry loads no torch
    from kernels.testing.routing import router_inputs  # deferred: the registry loads no torch

    logits, bias, kwargs, planted = router_inputs(shape, seed)
    if bias is not None:
        kwargs["correction_bias"] = torch.from_numpy(bias).to(device, torch.float32)
    x = torch.from_numpy(logits).to(device, torch_dtype(shape["dtype"]))
    return Inputs("route", shape, (x, shape["top_k"]), kwargs, planted)


def call(fn, inputs: Inputs) -> dict:
    ids, weights = fn(*inputs.args, **inputs.kwargs)
    return {"topk_ids": ids, "topk_weights": weights}


def _nan_rows(inputs: Inputs) -> np.ndarray:
    from kernels.reference._arrays import f64  # deferred: the registry loads no torch

    return np.isnan(f64(inputs.args[0])).any(axis=1)


def tolerance(inputs: Inputs, expected: dict) -> dict:
    """Ids: exact (0), except in a token whose logits hold NaN (inf: any valid ids; ``extra_checks`` asks them to
    be k distinct ids in ``[0, E)``). Weights: ``weights_atol`` per element."""
    from kernels.testing.routing import weights_atol  # deferred: the registry loads no torch

    kw = {**DEFAULTS, **inputs.kwargs}
    logits, k = inputs.args
    ids_tol = np.where(_nan_rows(inputs)[:, None], np.inf, 0.0) * np.ones((1, k))
    atol = weights_atol(int(logits.shape[1]), k, kw["scoring"], kw["routed_scaling_factor"])
    return {"topk_ids": ids_tol, "topk_weights": np.full(ids_tol.shape, atol)}


def extra_checks(inputs: Inputs, actual: dict) -> list:
    """Every token's k ids distinct and in ``[0, E)`` (whatever its logits hold: a NaN row's ids are not compared
    with the reference's)."""
    ids = actual["topk_ids"]
    ids = np.asarray(ids.detach().cpu() if hasattr(ids, "detach") else ids).astype(np.int64)
    e = int(inputs.args[0].shape[1])
    bad = [t for t, row in enumerate(ids.reshape(ids.shape[0], -1))
           if len(set(row.tolist())) != row.size or (row < 0).any() or (row >= e).any()]
    nan = int(_nan_rows(inputs).sum())
    detail = f"tokens {bad[:5]} have repeated ids or ids outside [0, {e}): {ids[bad[:3]].tolist()}" if bad else ""
    return [("ids valid", not bad, detail,
             f"{ids.shape[0]} tokens x {ids.shape[1] if ids.ndim == 2 else 0} distinct ids in [0, {e})"
             + (f", {nan} with a NaN logit" if nan else ""))]


def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"topk_ids": torch.int32, "topk_weights": torch.float32}


def features(args, kwargs) -> set:
    """The dtype, and each DeepSeek keyword the call sets (named like the keyword, so a router that declines
    one may leave it out of its signature)."""
    feats = {f"dtype={str(args[0].dtype).replace('torch.', '')}"}
    for key in CALL[1:]:
        if key in kwargs and kwargs[key] is not None and kwargs[key] != DEFAULTS[key]:
            feats.add(key)
    return feats


def draw(rng) -> dict:
    """9 to 40 tokens over 8 to 64 experts, any k up to 8, either scoring, renormalised or not, scaled or not;
    no bias and no groups (experts are then chosen on the logits, exact whatever the fresh values)."""
    e = rng.choice((8, 16, 60, 64))
    return _shape(rng.randint(9, 40), rng.choice(("float32", "bfloat16")), experts=e, top_k=rng.randint(1, min(e, 8)),
                  scoring=rng.choice(("softmax", "sigmoid")), renormalize=rng.choice((True, False)),
                  routed_scaling_factor=rng.choice((1.0, 2.5)))


def cost(s: dict):
    return C.route(s["tokens"], s["experts"], s["top_k"], dtype=s["dtype"], bias=bool(s.get("correction_bias")),
                   groups=s.get("num_groups") or 0)


def cases() -> list:
    return [Case("route", "mixtral/route/t16", _shape(16, **MIXTRAL), _shape(16, **MIXTRAL), quick=True),
            Case("route", "deepseek-v3/route/t16", _shape(16, **DEEPSEEK_V3), _shape(16, **DEEPSEEK_V3), quick=True),
            Case("route", "deepseek-v3/route/t4096", _shape(4096, **DEEPSEEK_V3), _shape(48, **DEEPSEEK_V3))]


def launch_case(device, router: dict) -> tuple[tuple, dict, dict]:
    """A small ``route`` for the launch-path tests (``OpSpec.launch_cases``)."""
    inputs = build(_shape(7, **router), device, seed=7)
    return inputs.args, inputs.kwargs, {}


SPEC = OpSpec(
    name="route",
    summary="MoE router: softmax or sigmoid top-k, DeepSeek's selection bias, group-limited top-k, scaling",
    reference="kernels.reference.routing:route",
    kernel="kernels.triton.ops.route:route",
    torch="kernels.torch_eager:route",
    outputs=("topk_ids", "topk_weights"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    extra_checks=extra_checks, out_dtypes=out_dtypes, draw=draw, style=("P", "tab:olive"),
    validation_reads_device=False,
    invariance=(Invariance("route ties", "kernels.testing.invariance:route_ties", ("default",), ("default",)),),
    launch_cases={"": lambda device: launch_case(device, dict(experts=6, top_k=2)),
                  "grouped": lambda device: launch_case(device, dict(experts=16, top_k=3, scoring="sigmoid",
                                                                     correction_bias=True, num_groups=4,
                                                                     topk_groups=2, routed_scaling_factor=2.5))},
    shape=ShapeSchema({"tokens": "tokens T", "experts": "E", "top_k": "k", "dtype": "the router logits' dtype"},
                      {"renormalize": "route's keyword (default True)",
                       "scoring": "'softmax' (default) or 'sigmoid'",
                       "correction_bias": "True: a float32 selection bias [E] is drawn",
                       "num_groups": "expert groups", "topk_groups": "groups kept",
                       "routed_scaling_factor": "the weights' factor (default 1.0)"}),
    keywords={key: "" for key in CALL},
    partners={"num_groups": ("topk_groups",), "topk_groups": ("num_groups",)},
    check={
        "mixtral-8x7b/route-renormalized": _shape(37, **MIXTRAL),
        "qwen1.5-moe/route-unnormalized-bf16": _shape(23, "bfloat16", **QWEN15_MOE),
        "deepseek-v2/route-grouped-softmax-top6": _shape(16, "bfloat16", **DEEPSEEK_V2),
        "deepseek-v3/route-grouped-sigmoid-biased": _shape(16, **DEEPSEEK_V3),
        "kimi-k2/route-sigmoid-biased-e384": _shape(8, **KIMI_K2),
    },
)
