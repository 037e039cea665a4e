"""``grouped_gemm``: dense per-expert GEMM over contiguous row groups (see docs/contract.md; inputs, call and
tolerance in ``kernels.testing.gemm``)."""
from __future__ import annotations

from kernels.testing.gemm_spec import gemm_spec

SPEC = gemm_spec(
    "grouped_gemm", "bf16", summary="dense grouped GEMM (bf16/fp16/fp32 experts)",
    kernel="kernels.triton.ops.grouped_gemm:grouped_gemm",
    check={"mixtral-8x7b-like/grouped-gemm-bf16": dict(tokens=160, experts=8, n=200, k=256, dtype="bfloat16",
                                                       group_size=None, out_dtype="float32"),
           # flashinfer-bench's published gemm_n128_k2048 (Qwen3-30B-A3B's MoE router, float16): one expert,
           # y in a's dtype
           "qwen3-30b-a3b/router-gemm-n128-k2048-fp16": dict(tokens=24, experts=1, n=128, k=2048, dtype="float16",
                                                              group_size=None)})
