"""servekernels kernels: float64 numpy references (``kernels.reference``) and Triton kernels (``kernels.triton``).

The two subpackages expose the same public names with the same semantics (see docs/CONTRACT notes in README).
"""
