"""Triton kernels with the same public names and semantics as ``kernels.reference``.

Each op lives in its own module (kernel, then launcher), named by the op's spec (``kernels/ops/<op>.py``); names
resolve lazily so importing this package imports no kernel module. A module may not share its function's name
(importing it would shadow the function): ``write_kv`` lives in ``kv_write.py``, ``grouped_gemm`` in
``dense_gemm.py``. Call ``kernels.runtime.configure_triton()`` first where there may be no GPU (the CLI
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
    "route": "moe",
    "moe_permute": "moe",
}


__getattr__ = lazy_names(__name__, lambda: op_modules(__name__, _HELPERS, "kernel"))
