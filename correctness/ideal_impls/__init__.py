"""Two "ideal" implementations of every registry op, the proof of the suite's one rule of fairness: a verdict
compares against the float64 reference with a bound that admits every rounding the contract allows, so both
must pass everything they provide (``python -m pytest --impl correctness.ideal_impls.float32``; a selection for
both in ``correctness/test_fairness.py``).

- ``float64_out``: the float64 definition (``kernels.reference``) stored in the output dtype (one rounding);
- ``float32``: float32 everywhere (``kernels.torch_eager``: float32 math, one cast of the result).

Neither declares this project's launcher extras; neither is Triton (nothing to count).
"""
