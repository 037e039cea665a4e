"""Inputs of a catalogue case's full shape that cost (almost) no memory: for grids and counting at model size."""
from __future__ import annotations

from kernels.ops import Case, get


def lazy_inputs(case: Case, stride0: bool = True):
    """``(args, kwargs)`` of the case's full shape that cost (almost) no memory: the op spec's ``full_inputs``.

    ``stride0=True``: caches, activations and weights are stride-0 expansions of one element (for grids only:
    every block aliases, so nothing may be executed on them). ``stride0=False``: real but uninitialised
    (``torch.empty``) tensors, touched only by the programs that run; for counting, where aliased addresses
    would merge into one transaction. Values are arbitrary: byte counts depend on addresses and masks only.
    An op without ``full_inputs`` is small enough to build for real at full size (its spec's ``build``; its
    tensors copied, so an in-place op never writes into another caller's inputs).
    """
    import torch  # deferred: importing the report's modules must not import torch (``--help``)

    from kernels.testing.paged import torch_dtype  # deferred: imports torch; the report (and --help) loads without it

    spec = get(case.op)
    if spec.full_inputs is None:
        inputs = spec.build(case.shape, "cpu", seed=0)
        return (tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in inputs.args),
                dict(inputs.kwargs or {}))

    def big(shape, dtype):
        dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
        if not stride0:
            return torch.empty(shape, dtype=dtype)
        # every leading dim stride 0, the last one real (launchers require a contiguous last dim)
        return torch.zeros((1,) * (len(shape) - 1) + (shape[-1],), dtype=dtype).expand(*shape)

    return spec.full_inputs(case.shape, big, stride0)
