"""Roofline model for the servekernels kernels: GPU specs, per-op cost models, counted traffic, the report.

- ``roofline.specs``: dense peak FLOP/s per dtype, HBM bandwidth, SMs, L2, shared memory (sources noted).
- ``roofline.cost``: FLOPs and minimum bytes of every op from its shape.
- ``roofline.counting``: the bytes a Triton kernel's loads and stores really move, counted under the interpreter.
- ``roofline.report``: ``servekernels report``.

Importing this package imports neither torch nor triton.
"""
