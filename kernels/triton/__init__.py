"""Triton kernels with the same public names and semantics as ``kernels.reference``.

Each op lives in its own module (kernel, then launcher); names resolve lazily so importing this package
imports no kernel module. Call ``kernels.runtime.configure_triton()`` first where there may be no GPU (the CLI
and the tests do).
"""
from __future__ import annotations

from kernels.lazy import lazy_names

_MODULES = {
    "paged_decode": "decode",
    "paged_prefill": "prefill",
    "merge_states": "merge",
    "write_kv": "kv_write",  # not "write_kv": importing a submodule of that name would shadow the function
    "quantize_int4": "quant",
    "dequantize_int4": "quant",
    "quantize_fp8": "quant",
    "quantize_fp8_act": "quant",
    "Int4Weight": "quant",
    "Fp8Weight": "quant",
    "grouped_gemm": "dense_gemm",  # a module may not share its function's name: importing it would shadow the function
    "grouped_gemm_int4": "int4_gemm",
    "grouped_gemm_fp8": "fp8_gemm",
    "route": "moe",
    "moe_permute": "moe",
    "fused_moe": "moe",
}

__all__ = sorted(_MODULES)
__getattr__ = lazy_names(__name__, _MODULES)
