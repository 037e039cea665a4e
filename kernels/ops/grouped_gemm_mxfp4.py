"""``grouped_gemm_mxfp4``: W4A16 grouped GEMM on MXFP4 weights (OCP Microscaling: E2M1 codes, one E8M0 scale per
32 k) with an optional float32 per-expert bias (see docs/contract.md; inputs, call and tolerance in
``kernels.testing.gemm``). Every check case has skewed groups (a hot expert, empty ones whose scales are 255,
the NaN scale, and whose bias is NaN), the scales in a padded buffer whose bytes past each row's end are 255, and
a bias; the first has gpt-oss's K = 2880 (2880 % 128 = 64), the second K = 32 (one MX block) and N = 258 in
float16 with a float32 output (fused_moe's gpt-oss cases have N = 320 and 96)."""
from __future__ import annotations

from kernels.testing.gemm_spec import gemm_spec

SPEC = gemm_spec(
    "grouped_gemm_mxfp4", "mxfp4", summary="W4A16 grouped GEMM (MXFP4 weights, per-expert bias)",
    kernel="kernels.triton.ops.grouped_gemm_mxfp4:grouped_gemm_mxfp4",
    check={"gpt-oss-120b-like/grouped-gemm-mxfp4-k2880": dict(tokens=4, experts=3, n=72, k=2880, dtype="bfloat16",
                                                              group_size=None),
           "gpt-oss-like/grouped-gemm-mxfp4-k32-n258-fp16": dict(tokens=40, experts=6, n=258, k=32, dtype="float16",
                                                                group_size=None, out_dtype="float32")},
    keywords={"bias": ""})
