"""``grouped_gemm``: dense per-expert GEMM over contiguous row groups (see docs/contract.md;
inputs, call and tolerance in ``kernels.testing.gemm``)."""
from __future__ import annotations

from kernels.ops import Inputs, OpSpec


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.gemm import build_gemm

    return build_gemm("grouped_gemm", shape, device, seed)


def call(fn, inputs):
    from kernels.testing.gemm import gemm_call

    return gemm_call(fn, inputs)


def tolerance(inputs, expected):
    from kernels.testing.gemm import gemm_tolerance

    return gemm_tolerance(inputs, expected)


def features(args, kwargs):
    from kernels.testing.gemm import gemm_features

    return gemm_features(args, kwargs)


def cost(shape):
    from kernels.testing.gemm import gemm_cost

    return gemm_cost("grouped_gemm", shape)


def cases():
    from kernels.testing.gemm import gemm_cases

    return gemm_cases("grouped_gemm", "bf16")


SPEC = OpSpec(
    name="grouped_gemm",
    summary="dense grouped GEMM (bf16/fp16/fp32 experts)",
    reference="kernels.reference.gemm:grouped_gemm",
    kernel="kernels.triton.dense_gemm:grouped_gemm",
    torch="kernels.torch_eager:grouped_gemm",
    outputs=("y",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    check={"mixtral-8x7b-like/grouped-gemm-bf16": dict(tokens=160, experts=8, n=200, k=256, dtype="bfloat16",
                                                       group_size=None, out_dtype="bfloat16")},
    goals={"gemm_traffic": (1.2, "grouped GEMMs counted traffic within 1.2x of minimum bytes at decode-sized T")},
    full_size_count=True,
)
