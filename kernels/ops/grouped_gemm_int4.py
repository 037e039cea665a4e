"""``grouped_gemm_int4``: W4A16 grouped GEMM on int4 group-quantized weights (see docs/contract.md;
inputs, call and tolerance in ``kernels.testing.gemm``)."""
from __future__ import annotations

from kernels.ops import Inputs, OpSpec


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.gemm import build_gemm

    return build_gemm("grouped_gemm_int4", shape, device, seed)


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

    return gemm_cost("grouped_gemm_int4", shape)


def cases():
    from kernels.testing.gemm import gemm_cases

    return gemm_cases("grouped_gemm_int4", "int4")


SPEC = OpSpec(
    name="grouped_gemm_int4",
    summary="W4A16 grouped GEMM (int4 groupwise weights, optional zero points)",
    reference="kernels.reference.gemm:grouped_gemm_int4",
    kernel="kernels.triton.int4_gemm:grouped_gemm_int4",
    torch="kernels.torch_eager:grouped_gemm_int4",
    outputs=("y",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    check={"mixtral-8x7b-like/grouped-gemm-int4-g128": dict(tokens=160, experts=8, n=200, k=256, dtype="float16",
                                                            group_size=128),
           "llama-like/grouped-gemm-int4-g32-zp-k-tail": dict(tokens=37, experts=4, n=72, k=352, dtype="bfloat16",
                                                             group_size=32, zero_point=True)},
    goals={"gemm_traffic": (1.2, "grouped GEMMs counted traffic within 1.2x of minimum bytes at decode-sized T")},
    full_size_count=True,
)
