"""``servekernels``: this project's Triton kernels, the ``kernel`` each op spec names."""
from __future__ import annotations

from kernels.impls import Provider
from kernels.ops import registry


def _kernel(op: str):
    spec = registry().get(op)
    if spec:
        return spec.kernel_fn()
    import kernels.triton  # the contract's other names (quantizers, route, moe_permute, weight types)

    return getattr(kernels.triton, op, None) if op in kernels.triton.__all__ else None


# the launchers' keywords beyond the contract: the machine the split plans aim at, split and tile overrides, the
# validate=False launch path and its host hints (docs/contract.md, "Launch without host reads")
EXTRAS = frozenset({"num_sms", "blocks_per_sm", "num_splits", "split_k", "validate", "max_seq_len", "max_query_len"})

PROVIDER = Provider(name="servekernels", description="this project's Triton kernels (kernels/triton)",
                    functions=_kernel, internal=True, extras=EXTRAS)
