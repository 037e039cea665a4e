"""Seven implementations written from scratch in plain torch, as a new user brings them with ``--impl`` (none
wraps this project's kernels or references): two right ones and five with one planted bug each. Every consumer
(``servekernels check --impl``, ``python -m pytest --impl``, ``servekernels report --impl``) must pass the right
ones and fail each wrong one (``correctness/test_newcomers.py``).

- ``right_decode_merge``: ``paged_decode`` and ``merge_states``, float32 math, a loop over sequences;
- ``right_moe_router``: ``fused_moe`` (dense, int4 and fp8 experts), ``route`` and ``moe_permute``, float32;
- ``causal_off_by_one_prefill``: ``paged_prefill`` whose causal mask lets each query see one future key;
- ``int4_zero_seven``: ``grouped_gemm_int4`` that dequantizes symmetric weights as ``(nibble - 7) * s``;
- ``route_ignores_renormalize``: ``route`` that always renormalises the top-k weights;
- ``renormalizing_fused_moe``: ``fused_moe`` that renormalises the router's weights itself;
- ``lse_without_scale``: ``paged_decode`` whose LSE lacks the softmax scale (off by the factor ``sqrt(head_dim)``).

A wrong module takes the rest of its code from a right one, so the module is its bug.
"""
