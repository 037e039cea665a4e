"""``rms_norm``: ``x / sqrt(mean(x**2) + eps) * (weight_offset + weight)`` per row (see docs/contract.md).

Inputs (``kernels.testing.norms``): x a view of rows padded with NaN (``layout="padded"``), an all-zero row, a
row of magnitude 1e-3 (where eps matters) and one of 1e3; a weight with some negative entries. Tolerance: the
float32 norm's relative error bound ``(H / 2 + 6) u_f32`` plus the output cast, per element (``norm_atol``).
The catalogue: Llama-3-8B (hidden 4096), DeepSeek-V3 (7168, and its q/kv LoRA norms 1536 and 512) and Gemma-2
(3584, weight offset 1) at T = 1 to 8192; the goal: counted traffic within 1.02x of the minimum.
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from kernels.ops.models import DEEPSEEK_V3_NORMS, GEMMA2_9B_NORM, LLAMA3_8B_NORM, NORM_TOKENS, small_tokens
from roofline import cost as C

NORM_GOAL = {"norm_traffic": (1.02, "RMSNorm family counted traffic within 1.02x of minimum bytes (x, residual "
                                    "and weight read once, outputs written once)")}
NORM_SHAPE = {"num_tokens": "tokens T (rows)", "hidden": "hidden size H", "dtype": "x's (and the output's) dtype",
              "eps": "the norm's eps"}
NORM_OPTIONAL = {"weight_dtype": "the weight's dtype (default: dtype)",
                 "layout": "inputs: 'padded' (x a view of NaN-padded rows) or 'contiguous'"}


def norm_inputs(shape: dict, device: str, seed: int, offset: float = 0.0):
    """(x, weight, rng) of a norm shape, poisoned (``kernels.testing.norms``)."""
    from kernels.testing.norms import norm_rows, norm_weight, padded  # deferred: the registry loads no torch

    rng = np.random.default_rng(seed)
    t, h = shape["num_tokens"], shape["hidden"]
    x = padded(norm_rows(t, h, rng), shape["dtype"], device, shape.get("layout", "padded"))
    w = norm_weight(h, rng, offset, shape.get("weight_dtype", shape["dtype"]), device)
    return x, w, rng


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    offset = shape.get("weight_offset", 0.0)
    x, w, _ = norm_inputs(shape, device, seed, offset)
    kwargs = {"eps": shape["eps"], **({"weight_offset": offset} if "weight_offset" in shape else {})}
    return Inputs("rms_norm", shape, (x, w), kwargs)


def call(fn, inputs: Inputs) -> dict:
    return {"out": fn(*inputs.args, **inputs.kwargs)}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    """``norm_atol`` of the output dtype (x's) at each element's magnitude."""
    from kernels.testing.norms import norm_atol  # deferred: the registry loads no torch

    return {"out": norm_atol(expected["out"], inputs.args[0].dtype, inputs.shape["hidden"])}


def cost(shape: dict):
    return C.rms_norm(shape["num_tokens"], shape["hidden"], dtype=shape["dtype"],
                      weight_dtype=shape.get("weight_dtype"))


def norm_shape(t, hidden, eps, dtype="bfloat16", **extra) -> dict:
    return dict(num_tokens=t, hidden=hidden, dtype=dtype, eps=eps, **extra)


def norm_cases(op: str, make) -> list:
    """Llama-3-8B and DeepSeek-V3 norms at every ``NORM_TOKENS``; ``make(t, hidden, eps)`` -> a shape."""
    out = []
    for model, hidden, eps in (("llama3-8b", LLAMA3_8B_NORM["hidden"], LLAMA3_8B_NORM["eps"]),
                               ("deepseek-v3", DEEPSEEK_V3_NORMS["hidden"], DEEPSEEK_V3_NORMS["eps"])):
        for t in NORM_TOKENS:
            out.append(Case(op, f"{model}/{op.replace('_', '-')}/t{t}", make(t, hidden, eps),
                            make(small_tokens(t), hidden, eps), quick=(t == 1 and model == "llama3-8b"),
                            goal="norm_traffic", tracked=(t == 1024 and model == "llama3-8b")))
    return out


def cases() -> list:
    ds, gemma = DEEPSEEK_V3_NORMS, GEMMA2_9B_NORM
    extra = [Case("rms_norm", f"deepseek-v3/rms-norm/{name}-t4096", norm_shape(4096, ds[key], ds["eps"]),
                  norm_shape(small_tokens(4096), ds[key], ds["eps"]), goal="norm_traffic")
             for name, key in (("q-lora", "q_lora_rank"), ("kv-lora", "kv_lora_rank"))]
    extra.append(Case("rms_norm", "gemma2-9b/rms-norm/t1024-offset",
                      norm_shape(1024, gemma["hidden"], gemma["eps"], weight_offset=1.0),
                      norm_shape(small_tokens(1024), gemma["hidden"], gemma["eps"], weight_offset=1.0),
                      goal="norm_traffic"))
    return norm_cases("rms_norm", lambda t, h, eps: norm_shape(t, h, eps)) + extra


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small norm for the launch-path tests (``OpSpec.launch_cases``)."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.standard_normal((5, 96))).to(device, torch.bfloat16)
    w = torch.from_numpy(rng.standard_normal(96)).to(device, torch.bfloat16)
    return (x, w), {"eps": 1e-6, "weight_offset": 0.5}, {}


def out_dtypes(inputs: Inputs) -> dict:
    return {"out": inputs.args[0].dtype}


def draw(rng) -> dict:
    """9 to 80 contiguous rows of Llama-3-8B's 4096 (x dense: the fresh-values defence refills it)."""
    return norm_shape(rng.randint(9, 80), 4096, 1e-5, layout="contiguous")


def norm_features(args, kwargs) -> set:
    feats = {f"dtype={str(args[0].dtype).replace('torch.', '')}"}
    if kwargs.get("weight_offset"):
        feats.add("weight_offset")
    return feats


def row_shape(shape: dict) -> dict:
    return {k: shape[k] for k in ("num_tokens", "hidden", "dtype") if k in shape}


SPEC = OpSpec(
    name="rms_norm",
    summary="RMSNorm of each row, float32 inside (Gemma's weight offset)",
    reference="kernels.reference.norms:rms_norm",
    kernel="kernels.triton.ops.rms_norm:rms_norm",
    torch="kernels.torch_eager:rms_norm",
    outputs=("out",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=norm_features,
    shape=ShapeSchema(NORM_SHAPE, {**NORM_OPTIONAL, "weight_offset": "the weight's offset (Gemma: 1)"}),
    goals=NORM_GOAL,
    keywords={"eps": "", "weight_offset": ""},
    style=("D", "tab:cyan"), launch_cases={"": launch_case}, validation_reads_device=False,
    invariance=(Invariance("rms_norm row alone vs batch", "kernels.testing.invariance:norm_row_alone_vs_batch",
                           ("default",), ("default",)),),
    out_dtypes=out_dtypes, draw=draw, row_shape=row_shape,
    check={"llama3-8b/rms-norm-padded": norm_shape(37, 4096, 1e-5),
           "gemma2-9b/rms-norm-offset-fp16": norm_shape(21, 3584, 1e-6, "float16", weight_offset=1.0),
           "deepseek-v3/rms-norm-kv-lora-fp32": norm_shape(70, 512, 1e-6, "float32", weight_dtype="bfloat16")},
)
