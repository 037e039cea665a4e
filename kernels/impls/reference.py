"""``reference``: the float64 oracle itself, judged against itself as a sanity row (every tolerance must be
met with zero error, and every comparison must be non-vacuous)."""
from __future__ import annotations

from kernels.impls import Provider
from kernels.ops import registry


def _reference(op: str):
    spec = registry().get(op)
    if spec:
        return spec.reference_fn()
    import kernels.reference  # the contract's other names (quantizers, route, moe_permute, weight types)

    return getattr(kernels.reference, op, None) if op in kernels.reference.__all__ else None


PROVIDER = Provider(name="reference", description="the float64 numpy references (kernels/reference)",
                    functions=_reference, triton=False, eager_torch=False)
