"""``grouped_gemm_fp8``: W8A8 grouped GEMM, fp8 e4m3 block-scaled weights and per-token-group activations (see
docs/contract.md; inputs, call and tolerance in ``kernels.testing.gemm``)."""
from __future__ import annotations

from kernels.testing.gemm_spec import gemm_spec

SPEC = gemm_spec(
    "grouped_gemm_fp8", "fp8", summary="W8A8 grouped GEMM (fp8 e4m3, 128x128 weight blocks, 1x128 activation groups)",
    kernel="kernels.triton.ops.grouped_gemm_fp8:grouped_gemm_fp8",
    check={"deepseek-v3-like/grouped-gemm-fp8-block": dict(tokens=160, experts=16, n=200, k=384, dtype="bfloat16",
                                                           group_size=128, granularity="block", out_dtype="float16")})
