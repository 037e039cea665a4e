"""``grouped_gemm``: dense per-expert GEMM over contiguous row groups (see docs/contract.md; inputs, call and
tolerance in ``kernels.testing.gemm``)."""
from __future__ import annotations

from kernels.testing.gemm_spec import gemm_spec

SPEC = gemm_spec(
    "grouped_gemm", "bf16", summary="dense grouped GEMM (bf16/fp16/fp32 experts)",
    kernel="kernels.triton.ops.grouped_gemm:grouped_gemm",
    check={"mixtral-8x7b-like/grouped-gemm-bf16": dict(tokens=160, experts=8, n=200, k=256, dtype="bfloat16",
                                                       group_size=None, out_dtype="float32")})
