"""``fused_add_rms_norm``: ``residual += x`` in place, then ``rms_norm`` of the new residual (see docs/contract.md).

Inputs as ``rms_norm``'s (x and residual views of NaN-padded rows, planted zero, tiny and large rows of x where the
residual is zero, so the new residual has them); the residual in its own dtype (float32 in the check case that says so). Each implementation writes into a fresh copy
of the residual (views and padding kept). Tolerances (``kernels.testing.norms``): the residual within two roundings
of the sum to its dtype; the output ``norm_atol`` widened by twice that (every element of the normed row may have
moved by it).
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Inputs, Invariance, OpSpec, ShapeSchema
from kernels.ops.rms_norm import (NORM_GOAL, NORM_OPTIONAL, NORM_SHAPE, norm_cases, norm_features, norm_inputs,
                                  norm_shape, out_dtypes, row_shape)
from roofline import cost as C


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.norms import padded, residual_rows  # deferred: the registry loads no torch

    x, w, rng = norm_inputs(shape, device, seed)
    res = padded(residual_rows(*x.shape, rng), shape.get("residual_dtype", shape["dtype"]), device,
                 shape.get("layout", "padded"))
    return Inputs("fused_add_rms_norm", shape, (x, res, w), {"eps": shape["eps"]})


def fresh_view(t):
    """A copy of ``t`` with its view kept: its base cloned (NaN padding included) and ``t``'s view of it."""
    if t._base is None:
        return t.clone()
    return t._base.clone().as_strided(t.shape, t.stride(), t.storage_offset())


def call(fn, inputs: Inputs) -> dict:
    x, res, w = inputs.args
    res = fresh_view(res)
    out = fn(x, res, w, **inputs.kwargs)
    return {"out": out, "residual": res}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.norms import norm_atol, residual_atol, residual_rel  # deferred: the registry loads no torch

    x, res, _ = inputs.args
    return {"out": norm_atol(expected["out"], x.dtype, inputs.shape["hidden"], 2 * residual_rel(res.dtype)),
            "residual": residual_atol(expected["residual"], res.dtype)}


def cost(shape: dict):
    return C.rms_norm(shape["num_tokens"], shape["hidden"], dtype=shape["dtype"],
                      weight_dtype=shape.get("weight_dtype"), residual_dtype=shape.get("residual_dtype",
                                                                                         shape["dtype"]))


def cases() -> list:
    return norm_cases("fused_add_rms_norm", lambda t, h, eps: norm_shape(t, h, eps))


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small fused add for the launch-path tests (``OpSpec.launch_cases``), a float32 residual."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.standard_normal((5, 96))).to(device, torch.bfloat16)
    res = torch.from_numpy(rng.standard_normal((5, 96))).to(device, torch.float32)
    w = torch.from_numpy(rng.standard_normal(96)).to(device, torch.bfloat16)
    return (x, res, w), {"eps": 1e-6}, {}


def draw(rng) -> dict:
    """9 to 80 contiguous rows of Llama-3-8B's 4096 (x dense: the fresh-values defence refills it)."""
    return norm_shape(rng.randint(9, 80), 4096, 1e-5, layout="contiguous")


SPEC = OpSpec(
    name="fused_add_rms_norm",
    summary="residual += x in place, then RMSNorm of the new residual",
    reference="kernels.reference.norms:fused_add_rms_norm",
    kernel="kernels.triton.ops.fused_add_rms_norm:fused_add_rms_norm",
    torch="kernels.torch_eager:fused_add_rms_norm",
    outputs=("out", "residual"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=norm_features,
    shape=ShapeSchema(NORM_SHAPE, {**NORM_OPTIONAL, "residual_dtype": "the residual's dtype (default: dtype)"}),
    goals=NORM_GOAL,
    keywords={"eps": ""},
    style=("d", "tab:cyan"), launch_cases={"": launch_case}, validation_reads_device=False,
    invariance=(Invariance("fused_add_rms_norm row alone vs batch",
                           "kernels.testing.invariance:norm_row_alone_vs_batch", ("default",), ("default",),
                           args=(("form", "fused_add"),)),),
    out_dtypes=out_dtypes, draw=draw, row_shape=row_shape, writes=(1,), writes_args=(1,),
    check={"llama3-8b/fused-add-rms-norm-f32-residual": norm_shape(37, 4096, 1e-5, residual_dtype="float32"),
           "deepseek-v3/fused-add-rms-norm-two-programs": norm_shape(70, 7168, 1e-6)},
)
