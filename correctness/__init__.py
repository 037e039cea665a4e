"""Parity suite: every Triton kernel against its float64 reference (tests are ``test_<op>.py``).

The helper modules here (``assertions``, ``tolerances``, ``inputs``) are imported by the benchmarks, the
report and ``servekernels check`` too, so inputs and oracles are written once.
"""
