"""``servekernels``: this project's Triton kernels, the ``kernel`` each op spec names."""
from __future__ import annotations

from kernels.impls import Provider


def _kernel(op: str):
    from kernels.ops import registry

    spec = registry().get(op)
    if spec:
        return spec.kernel_fn()
    import kernels.triton  # the contract's other names (quantizers, route, moe_permute, weight types)

    return getattr(kernels.triton, op, None) if op in kernels.triton.__all__ else None


PROVIDER = Provider(name="servekernels", description="this project's Triton kernels (kernels/triton)",
                    functions=_kernel, internal=True)
