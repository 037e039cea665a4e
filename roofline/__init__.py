"""Roofline model for the servekernels kernels: GPU specs, per-op cost models, counted traffic, the report.

- ``roofline.specs``: dense peak FLOP/s per dtype, HBM bandwidth, SMs, L2, shared memory, per-SM limits and
  compute capability (sources noted).
- ``roofline.cost``: FLOPs and minimum bytes of every op from its shape.
- ``roofline.counting``: the bytes a Triton kernel's loads and stores really move, counted under the interpreter.
- ``roofline.compile_metrics``: registers, spills, shared memory, resident blocks and waves of the kernels a
  launcher picks for a case, compiled for the GPU's arch with Triton's bundled ptxas (``roofline.occupancy``).
- ``roofline.timing_model``: ``t_counted`` and ``t_model`` (modeled, labelled so).
- ``roofline.report``: ``servekernels report`` (its compile/model section: ``roofline.report_sections``).

Importing this package imports neither torch nor triton.
"""
