"""A decode whose LSE is returned without the softmax scale: an online-softmax kernel that keeps its running
maximum and sum in raw ``q . k`` units (the scale folded into the exponent) holds ``lse / scale`` and forgets to
multiply the scale back, so its LSE is off by the constant factor ``1 / scale = sqrt(head_dim)``. ``out`` is right
(``right_decode_merge``'s)."""
from correctness.newcomer_impls.right_decode_merge import paged_decode as _right_decode

SERVEKERNELS_TRITON = False
SERVEKERNELS_VALIDATES = False  # no input checks of its own: the bad-input tests skip for it


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None, soft_cap=None,
                 k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, return_lse=False,
                 batch_invariant=False):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    result = _right_decode(q, k_cache, v_cache, block_table, seq_lens, scale=scale, sliding_window=sliding_window,
                           soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale, return_lse=return_lse)
    if not return_lse:
        return result
    out, lse_raw_units = result[0], result[1] / scale  # what the kernel holds: the LSE in q . k units
    return out, lse_raw_units  # the bug: should be lse_raw_units * scale
