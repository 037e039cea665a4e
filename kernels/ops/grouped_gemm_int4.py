"""``grouped_gemm_int4``: W4A16 grouped GEMM on int4 group-quantized weights (see docs/contract.md; inputs, call
and tolerance in ``kernels.testing.gemm``). The second check case has K off the tile with a 32-group straddling
it, and zero points."""
from __future__ import annotations

from kernels.testing.gemm_spec import gemm_spec

SPEC = gemm_spec(
    "grouped_gemm_int4", "int4", summary="W4A16 grouped GEMM (int4 groupwise weights, optional zero points)",
    kernel="kernels.triton.ops.grouped_gemm_int4:grouped_gemm_int4",
    check={"mixtral-8x7b-like/grouped-gemm-int4-g128": dict(tokens=160, experts=8, n=200, k=256, dtype="float16",
                                                            group_size=128),
           "llama-like/grouped-gemm-int4-g32-zp-k-tail": dict(tokens=37, experts=4, n=72, k=352, dtype="bfloat16",
                                                             group_size=32, zero_point=True, out_dtype="float32")})
