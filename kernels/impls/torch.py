"""``torch``: the eager baseline a user writes first (``kernels/torch_eager.py``: gather the pages and run
matmul-softmax, dequantize then ``matmul``, a per-expert loop for MoE), on CPU and GPU."""
from __future__ import annotations

from kernels.impls import Provider
from kernels.ops import registry, resolve


def _eager(op: str):
    spec = registry().get(op)
    if spec:
        return resolve(spec.torch) if spec.torch else None
    import kernels.torch_eager as eager  # the contract's other names it has (quantize_fp8_act, route, ...)

    fn = getattr(eager, op, None)
    return fn if callable(fn) and not op.startswith("_") else None


PROVIDER = Provider(name="torch", description="eager torch baseline (kernels/torch_eager.py)", functions=_eager,
                    triton=False)
