"""Triton ``merge_states`` against the float64 reference, and against attention over the whole key set.

The partial states in most tests are real: a key set is cut into chunks, each chunk is attended with the
float64 ``dense_attention``, stored in the test dtype, then merged; the merge must give the attention over
all keys. Empty partials carry NaN outs, so a merge that multiplies them in (even by 0) fails.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from kernels.testing.assertions import assert_close
from kernels.testing.paged import torch_dtype
from kernels.testing.tolerances import attention_out_atol, lse_atol
from kernels import reference as R
from correctness.impl import T
from kernels.ops.merge_states import as_torch, split_attention


def check(out, lse, ref_out, ref_lse, dtype, v_max):
    assert out.dtype == torch_dtype(dtype) and lse.dtype == torch.float32
    # out is a convex combination of partial outs bounded by max |V|: partial-store and final-cast roundings
    assert_close(out, ref_out, atol=attention_out_atol(dtype, v_max), name="out")
    # lse = max + log(sum of weights <= S): float32 rounding relative to the largest |lse|
    finite = np.abs(ref_lse[np.isfinite(ref_lse)])
    assert_close(lse, ref_lse, atol=lse_atol("float32", float(finite.max(initial=1.0))), name="lse")


@pytest.mark.parametrize("num_parts", range(1, 9))
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_merge_of_a_split_equals_the_whole(num_parts, dtype, device):
    outs, lses, (whole_out, whole_lse), v_max = split_attention(num_parts, seed=num_parts)
    out, lse = T.merge_states(*as_torch(outs, lses, dtype, device))
    check(out, lse, whole_out, whole_lse, dtype, v_max)
    ref_out, ref_lse = R.merge_states(*as_torch(outs, lses, dtype, device))  # the reference on the same stored inputs
    check(out, lse, ref_out, ref_lse, dtype, v_max)


@pytest.mark.servekernels  # about this project's kernels, not the contract
@pytest.mark.meta_unsupported("calls the launcher itself, not through the implementation under test: no stop")
@pytest.mark.parametrize("cut_head_dim", [False, True])
def test_merge_with_the_head_dim_cut(cut_head_dim, device):
    """``launch_merge(cut_head_dim=True)`` (a split decode of few sequences) cuts D = 80 into 32-column chunks,
    the last one partial: the same result as whole rows, and the whole call's within tolerance."""
    from kernels.triton.ops.merge_states import launch_merge

    outs, lses, (whole_out, whole_lse), v_max = split_attention(3, num_tokens=5, heads=3, seed=7)
    o, l = as_torch(outs, lses, "float32", device)
    out = torch.full(o.shape[1:], float("nan"), dtype=o.dtype, device=o.device)
    lse = torch.full(l.shape[1:], float("nan"), dtype=torch.float32, device=o.device)
    launch_merge(o, l, out, lse, cut_head_dim=cut_head_dim)
    check(out, lse, whole_out, whole_lse, "float32", v_max)


@pytest.mark.parametrize("num_parts", [3, 5])
def test_any_order_gives_the_same_result(num_parts, device):
    outs, lses, (whole_out, whole_lse), v_max = split_attention(num_parts, seed=10 + num_parts)
    perms = list(itertools.permutations(range(num_parts)))
    for perm in perms[:: max(1, len(perms) // 6)]:  # identity, reversals and a spread of the rest
        out, lse = T.merge_states(*as_torch(outs[list(perm)], lses[list(perm)], "float16", device))
        check(out, lse, whole_out, whole_lse, "float16", v_max)


def test_hierarchical_merge_equals_flat_merge(device):
    outs, lses, (whole_out, whole_lse), v_max = split_attention(7, seed=20)
    o, s = as_torch(outs, lses, "float32", device)
    flat = T.merge_states(o, s)

    def merge_of(groups):
        merged = [T.merge_states(o[a:b], s[a:b]) for a, b in groups]
        return T.merge_states(torch.stack([m[0] for m in merged]), torch.stack([m[1] for m in merged]))

    two_level = merge_of([(0, 3), (3, 7)])
    three_way = merge_of([(0, 1), (1, 4), (4, 7)])
    for out, lse in (flat, two_level, three_way):
        check(out, lse, whole_out, whole_lse, "float32", v_max)
        check(out, lse, flat[0].cpu().numpy(), flat[1].cpu().numpy(), "float32", v_max)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_empty_partials_with_nan_outs_are_ignored(dtype, device):
    outs, lses, (whole_out, whole_lse), v_max = split_attention(3, seed=30)
    empty_lse = np.full((1, *lses.shape[1:]), -np.inf)
    empty_out = np.full((1, *outs.shape[1:]), np.nan)
    # empties first, in the middle and last; one token/head where everything but one partial is empty
    outs = np.concatenate([empty_out, outs[:1], empty_out, outs[1:], empty_out])
    lses = np.concatenate([empty_lse, lses[:1], empty_lse, lses[1:], empty_lse])
    lses[:, 0, 0] = -np.inf
    lses[3, 0, 0] = 1.5
    outs[3, 0, 0] = 0.25
    whole_out[0, 0], whole_lse[0, 0] = 0.25, 1.5
    out, lse = T.merge_states(*as_torch(outs, lses, dtype, device))
    check(out, lse, whole_out, whole_lse, dtype, v_max)


def test_all_partials_empty_gives_zero_and_minus_inf(device):
    outs = torch.full((4, 2, 3, 64), float("nan"), dtype=torch.float16, device=device)
    lses = torch.full((4, 2, 3), float("-inf"), device=device)
    lses[1, 1, 2] = 0.0  # one live (token, head) so the others are empty amid real work
    outs[1, 1, 2] = 1.0
    out, lse = T.merge_states(outs, lses)
    live = torch.zeros(2, 3, dtype=torch.bool, device=device)
    live[1, 2] = True
    assert (out[~live] == 0).all() and torch.isneginf(lse[~live]).all()
    assert (out[1, 2] == 1.0).all() and lse[1, 2] == 0.0


@pytest.mark.parametrize("shift", [200.0, -200.0])
def test_extreme_lse_stays_finite_and_correct(shift, device):
    """LSE ~ +-200: exp(200) is inf and exp(-200) is 0 in float32, so only a max-shifted merge survives."""
    outs, lses, (whole_out, whole_lse), v_max = split_attention(4, seed=40, logit_shift=shift)
    assert np.abs(lses).min() > 150
    out, lse = T.merge_states(*as_torch(outs, lses, "float32", device))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    check(out, lse, whole_out, whole_lse, "float32", v_max)


def test_strided_inputs(device):
    """vLLM keeps LSE as ``[S, H, T]``: a transposed view must work, as must a view of a wider out buffer."""
    outs, lses, (whole_out, whole_lse), v_max = split_attention(3, seed=50, head_dim=64)
    o, s = as_torch(outs, lses, "float16", device)
    wide = torch.cat([o, torch.full_like(o, float("nan"))], dim=-1)[..., :64]
    s_hT = s.transpose(1, 2).contiguous().transpose(1, 2)
    assert not s_hT.is_contiguous() and not wide.is_contiguous()
    out, lse = T.merge_states(wide, s_hT)
    check(out, lse, whole_out, whole_lse, "float16", v_max)


@pytest.mark.bad_input
@pytest.mark.parametrize("arg,outs,lses", [
    ("outs", torch.zeros(2, 3, 64), torch.zeros(2, 3)),
    ("lses", torch.zeros(2, 3, 4, 64), torch.zeros(2, 3)),
    ("lses", torch.zeros(2, 3, 4, 64), torch.zeros(2, 3, 5)),
    ("lses", torch.zeros(2, 3, 4, 64), torch.zeros(3, 3, 4)),
    ("outs", torch.zeros(0, 3, 4, 64), torch.zeros(0, 3, 4)),
    ("outs", torch.zeros(2, 3, 4, 64, dtype=torch.int32), torch.zeros(2, 3, 4)),
    ("lses", torch.zeros(2, 3, 4, 64), torch.zeros(2, 3, 4, dtype=torch.int64)),
    ("lses", torch.zeros(2, 3, 4, 64), torch.zeros(2, 3, 4, device="meta")),
], ids=["outs-ndim", "lses-ndim", "lses-heads", "lses-parts", "no-partials", "outs-int", "lses-int", "device"])
@pytest.mark.host_only("bad input is refused before any launch (host tensors, one on meta on purpose: a device mix)")
def test_bad_input_raises_value_error_naming_the_argument(arg, outs, lses):
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        T.merge_states(outs, lses)
