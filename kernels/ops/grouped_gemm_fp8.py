"""``grouped_gemm_fp8``: W8A8 grouped GEMM, fp8 e4m3 block-scaled weights and per-token-group activations (see docs/contract.md;
inputs, call and tolerance in ``kernels.testing.gemm``)."""
from __future__ import annotations

from kernels.ops import Inputs, OpSpec


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.gemm import build_gemm

    return build_gemm("grouped_gemm_fp8", shape, device, seed)


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

    return gemm_cost("grouped_gemm_fp8", shape)


def cases():
    from kernels.testing.gemm import gemm_cases

    return gemm_cases("grouped_gemm_fp8", "fp8")


SPEC = OpSpec(
    name="grouped_gemm_fp8",
    summary="W8A8 grouped GEMM (fp8 e4m3, 128x128 weight blocks, 1x128 activation groups)",
    reference="kernels.reference.gemm:grouped_gemm_fp8",
    kernel="kernels.triton.fp8_gemm:grouped_gemm_fp8",
    torch="kernels.torch_eager:grouped_gemm_fp8",
    outputs=("y",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    check={"deepseek-v3-like/grouped-gemm-fp8-block": dict(tokens=160, experts=16, n=200, k=384, dtype="bfloat16",
                                                           group_size=128, granularity="block")},
    goals={"gemm_traffic": (1.2, "grouped GEMMs counted traffic within 1.2x of minimum bytes at decode-sized T")},
    full_size_count=True,
)
