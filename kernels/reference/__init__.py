"""float64 numpy references: the definition of what every kernel computes.

Same public names as ``kernels.triton``; each family lives in its own module (``attention``, ``quant``,
``gemm``, ``moe``) and names resolve lazily.
"""
from __future__ import annotations

from kernels.lazy import lazy_names, op_modules

# the references' helpers and families; every op's module comes from its spec in the op registry
# (``kernels/ops/<op>.py``: ``SPEC.reference``), read on the first lookup (not at import: a spec module may
# import this package), so adding an op edits nothing here
_HELPERS = {
    "dense_attention": "attention",
    "gather_kv": "attention",
    "round_to_e4m3": "fp8",
    "quantize_int4": "quant",
    "dequantize_int4": "quant",
    "quantize_fp8": "quant",
    "dequantize_fp8": "quant",
    "quantize_fp8_act": "quant",
    "Int4Weight": "quant",
    "Fp8Weight": "quant",
    "quantize_mxfp4": "quant",
    "dequantize_mxfp4": "quant",
    "Mxfp4Weight": "quant",
    "moe_permute": "moe",
}


__getattr__ = lazy_names(__name__, lambda: op_modules(__name__, _HELPERS, "reference"))
