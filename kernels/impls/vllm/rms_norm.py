"""vLLM's ``rms_norm``: its batch-invariant Triton RMSNorm (``rms_norm_batch_invariant``: one program per row, two
passes over the row in tiles of 1024, the sum of squares then the normalization, the weight read by every row).

- ``weight_offset``: vLLM's kernel has none (its Gemma layer adds 1 to the weight before the call): declined.
- A strided ``x`` is made contiguous first (a torch copy, outside the kernel).
"""
from __future__ import annotations

from kernels.impls import Launch, peer_launch
from kernels.impls.vllm.env import load

UNSUPPORTED = {"weight_offset": "vLLM's batch-invariant RMSNorm has no weight offset (its Gemma layer adds 1 to the "
                                "weight before the call)"}


def rms_norm(x, weight, *, eps, weight_offset=0.0, **kwargs):
    return load().rms_norm_batch_invariant(x, weight, float(eps))


def setup(x, weight, *, eps, **ignored) -> Launch:
    """The timed call: one launch of vLLM's row kernel."""
    fn = load().rms_norm_batch_invariant
    return peer_launch(lambda state: fn(state["x"], state["weight"], float(eps)), {"x": x, "weight": weight})
