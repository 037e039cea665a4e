"""float64 numpy references: the definition of what every kernel computes.

Same public names as ``kernels.triton``; each family lives in its own module (``attention``, ``quant``,
``gemm``, ``moe``) and names resolve lazily.
"""
from __future__ import annotations

from kernels.lazy import lazy_names

_MODULES = {
    "dense_attention": "attention",
    "gather_kv": "attention",
    "paged_decode": "attention",
    "paged_prefill": "attention",
    "merge_states": "attention",
    "write_kv": "attention",
    "round_to_e4m3": "fp8",
    "quantize_int4": "quant",
    "dequantize_int4": "quant",
    "quantize_fp8": "quant",
    "dequantize_fp8": "quant",
    "quantize_fp8_act": "quant",
    "Int4Weight": "quant",
    "Fp8Weight": "quant",
    "grouped_gemm": "gemm",
    "grouped_gemm_int4": "gemm",
    "grouped_gemm_fp8": "gemm",
    "route": "moe",
    "moe_permute": "moe",
    "fused_moe": "moe",
}

__all__ = sorted(_MODULES)
__getattr__ = lazy_names(__name__, _MODULES)
