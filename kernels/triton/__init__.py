"""Triton kernels with the same public names and semantics as ``kernels.reference``.

Each op lives in its own module (kernel, then launcher), named by the op: ``kernels/triton/ops/<op>.py`` (a
subpackage, so a module never shadows the function of the same name here); shared jit helpers, tile configs and
the quantizers stay in this package. Names resolve lazily so importing this package imports no kernel module. Call ``kernels.runtime.configure_triton()`` first where there may be no GPU (the CLI
and the tests do).
"""
from __future__ import annotations

from kernels.lazy import lazy_names, op_modules

# the contract's helpers (quantizers, router, permutation, weight types); every op's module comes from its spec
# in the op registry (``kernels/ops/<op>.py``: ``SPEC.kernel``), read on the first lookup (not at import), so
# adding an op edits nothing here
_HELPERS = {
    "quantize_int4": "quant",
    "dequantize_int4": "quant",
    "quantize_fp8": "quant",
    "quantize_fp8_act": "quant",
    "Int4Weight": "quant",
    "Fp8Weight": "quant",
    "quantize_mxfp4": "quant",
    "dequantize_mxfp4": "quant",
    "Mxfp4Weight": "quant",
    "moe_permute": "ops.fused_moe",
}


__getattr__ = lazy_names(__name__, lambda: op_modules(__name__, _HELPERS, "kernel"))
