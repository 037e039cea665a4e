"""This project's Triton kernels, one module per op, named by the op (``kernels/ops/<op>.py`` is its spec, and its
``kernel`` field says ``"kernels.triton.ops.<op>:<op>"``). Each module holds the op's kernels and its launcher; the
public names resolve through ``kernels.triton`` (lazily: importing this package imports no kernel module)."""
