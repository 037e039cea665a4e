"""``rms_norm_quant_fp8``: RMSNorm, rounded to float32, quantized per token group to float8 e4m3 (see
docs/contract.md): ``quantize_fp8_act(float32(rms_norm(x, weight, eps)), group_size)``.

Inputs as ``rms_norm``'s. Tolerances (``kernels.testing.norms``): the kernel's float32 norm differs from the
reference's float64 norm rounded to float32 by the norm's relative error bound, far below an e4m3 step, so each
fp8 value is within one grid step at its magnitude (``e4m3_step``) and each scale within that relative error plus
its own float32 rounding (``scale_atol``).
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from kernels.ops.models import DEEPSEEK_V3_NORMS, LLAMA3_8B_NORM, NORM_TOKENS, small_tokens
from kernels.ops.rms_norm import NORM_GOAL, NORM_OPTIONAL, NORM_SHAPE, norm_features, norm_inputs, norm_shape, row_shape
from roofline import cost as C


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    x, w, _ = norm_inputs(shape, device, seed)
    return Inputs("rms_norm_quant_fp8", shape, (x, w), {"eps": shape["eps"], "group_size": shape["group_size"]})


def call(fn, inputs: Inputs) -> dict:
    out, scales = fn(*inputs.args, **inputs.kwargs)
    return {"out": out, "scales": scales}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.norms import e4m3_step, scale_atol  # deferred: the registry loads no torch

    return {"out": e4m3_step(expected["out"]), "scales": scale_atol(expected["scales"], inputs.shape["hidden"])}


def cost(shape: dict):
    return C.rms_norm(shape["num_tokens"], shape["hidden"], dtype=shape["dtype"],
                      weight_dtype=shape.get("weight_dtype"), group_size=shape["group_size"])


def quant_shape(t, hidden, eps, group_size, dtype="bfloat16", **extra) -> dict:
    return norm_shape(t, hidden, eps, dtype, group_size=group_size, **extra)


def cases() -> list:
    """DeepSeek-V3's fp8 activations (groups of 128) and a per-token fp8 Llama-3-8B (one scale per token)."""
    out = []
    for model, hidden, eps, g, tag in (("deepseek-v3", DEEPSEEK_V3_NORMS["hidden"], DEEPSEEK_V3_NORMS["eps"], 128,
                                        "g128"),
                                       ("llama3-8b", LLAMA3_8B_NORM["hidden"], LLAMA3_8B_NORM["eps"], 4096,
                                        "per-token")):
        for t in NORM_TOKENS:
            out.append(Case("rms_norm_quant_fp8", f"{model}/rms-norm-quant-fp8/{tag}-t{t}",
                            quant_shape(t, hidden, eps, g), quant_shape(small_tokens(t), hidden, eps, g),
                            quick=(t == 1 and g == 128), goal="norm_traffic", tracked=(t == 1024 and g == 128)))
    return out


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small fused quantization for the launch-path tests (``OpSpec.launch_cases``)."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((5, 256))).to(device, torch.bfloat16)
    w = torch.from_numpy(rng.standard_normal(256)).to(device, torch.bfloat16)
    return (x, w), {"eps": 1e-6, "group_size": 64}, {}


def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"out": torch.float8_e4m3fn, "scales": torch.float32}


def draw(rng) -> dict:
    """9 to 80 contiguous rows of DeepSeek-V3's 7168 in groups of 128."""
    return quant_shape(rng.randint(9, 80), 7168, 1e-6, 128, layout="contiguous")


def features(args, kwargs) -> set:
    return norm_features(args, kwargs) | {"fp8"}


SPEC = OpSpec(
    name="rms_norm_quant_fp8",
    summary="RMSNorm fused with dynamic per-token-group fp8 quantization",
    reference="kernels.reference.norms:rms_norm_quant_fp8",
    kernel="kernels.triton.ops.rms_norm_quant_fp8:rms_norm_quant_fp8",
    torch="kernels.torch_eager:rms_norm_quant_fp8",
    outputs=("out", "scales"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    shape=ShapeSchema({**NORM_SHAPE, "group_size": "the quantization's token group (>= hidden: one per token)"},
                      NORM_OPTIONAL),
    goals=NORM_GOAL,
    keywords={"eps": "",
              "group_size": "sets the scales' shape (ceil(H / group_size) columns): an implementation ignoring it "
                            "fails every case whose group is not its own (the check cases use 128 and per-token)"},
    style=("P", "tab:cyan"), launch_cases={"": launch_case}, validation_reads_device=False,
    invariance=(Invariance("rms_norm_quant_fp8 row alone vs batch",
                           "kernels.testing.invariance:norm_row_alone_vs_batch", ("default",), ("default",),
                           args=(("form", "quant_fp8"),)),),
    out_dtypes=out_dtypes, draw=draw, row_shape=lambda s: {**row_shape(s), "group_size": s["group_size"]},
    check={"deepseek-v3/rms-norm-quant-fp8-g128": quant_shape(37, 7168, 1e-6, 128),
           "llama3-8b/rms-norm-quant-fp8-per-token-two-programs": quant_shape(70, 4096, 1e-5, 4096),
           "small/rms-norm-quant-fp8-g64-tail": quant_shape(9, 300, 1e-6, 64, "float16")},
)
