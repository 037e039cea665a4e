"""What the suite uses to judge an implementation, outside the test package: the poisoned input generators
(``paged``, ``moe_inputs``), the derived tolerances (``tolerances``, ``tolerances_gemm``), the verbose
comparison (``assertions``) and the batch-invariance properties (``invariance``). The op registry
(``kernels.ops``), ``servekernels check``, the report and the parity tests all take them from here.
"""
