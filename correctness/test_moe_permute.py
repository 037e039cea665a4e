"""moe_permute: a stable counting sort of the T*k (token, slot) pairs by expert, and the group offsets."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import reference as R
from correctness.impl import T as K


def skewed_ids(num_tokens: int, top_k: int, num_experts: int, seed: int = 0) -> torch.Tensor:
    """Distinct experts per token; expert 1 is hot (most tokens pick it), the upper half of the experts is empty."""
    rng = np.random.default_rng(seed)
    live = max(1, num_experts // 2)
    p = np.ones(live)
    if live > 1:
        p[1 % live] = 4.0 * live  # the hot expert
    p /= p.sum()
    rows = [rng.choice(live, size=min(top_k, live), replace=False, p=p) for _ in range(num_tokens)]
    ids = np.array(rows, dtype=np.int32).reshape(num_tokens, min(top_k, live))
    return torch.from_numpy(ids)


def check_permute_properties(ids: torch.Tensor, num_experts: int, sorted_index, offsets):
    """What a stable counting sort is, checked without the reference."""
    flat = ids.reshape(-1).long().numpy()
    si, off = np.asarray(sorted_index, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    assert off.shape == (num_experts + 1,) and off[0] == 0 and off[-1] == flat.size
    assert sorted(si.tolist()) == list(range(flat.size)), "sorted_index is not a permutation"
    for e in range(num_experts):
        group = si[off[e]:off[e + 1]]
        assert off[e + 1] - off[e] == (flat == e).sum(), f"expert {e}: offsets disagree with the count"
        assert (flat[group] == e).all(), f"expert {e}: group holds other experts"
        assert (np.diff(group) > 0).all(), f"expert {e}: not stable (token order lost)"


@pytest.mark.parametrize("num_tokens,top_k,num_experts", [(0, 2, 8), (1, 1, 1), (1, 2, 8), (37, 2, 8),
                                                          (300, 6, 64), (5, 1, 64)])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_permute_matches_reference(num_tokens, top_k, num_experts, id_dtype, device):
    ids = skewed_ids(num_tokens, top_k, num_experts).to(id_dtype)
    sorted_index, offsets = K.moe_permute(ids.to(device), num_experts)
    sorted_index, offsets = sorted_index.cpu(), offsets.cpu()
    ref_index, ref_offsets = R.moe_permute(ids, num_experts)
    # the contract states no index dtype: any integer tensor a grouped GEMM takes (int32 or int64)
    assert sorted_index.dtype in (torch.int32, torch.int64) and offsets.dtype in (torch.int32, torch.int64)
    check_permute_properties(ids, num_experts, ref_index, ref_offsets)  # the reference is what it claims
    check_permute_properties(ids, num_experts, sorted_index.numpy(), offsets.numpy())
    np.testing.assert_array_equal(sorted_index.numpy(), ref_index)
    np.testing.assert_array_equal(offsets.numpy(), ref_offsets)
    if num_tokens and num_experts > 1:
        assert (np.diff(ref_offsets) == 0).any(), "skewed ids should leave some experts empty"


def test_equal_experts_keep_token_order(device):
    # every (token, slot) pair routed to the same two experts, in both slot orders
    ids = torch.tensor([[3, 0], [0, 3], [3, 0], [0, 3], [3, 0]], dtype=torch.int32)
    for impl in (K, R):
        sorted_index, offsets = impl.moe_permute(ids.to(device), 4)
        si = np.asarray(torch.as_tensor(sorted_index).cpu()).tolist()
        off = np.asarray(torch.as_tensor(offsets).cpu()).tolist()
        assert off == [0, 5, 5, 5, 10]
        assert si == [1, 2, 5, 6, 9, 0, 3, 4, 7, 8]


@pytest.mark.bad_input
@pytest.mark.parametrize("args,name", [
    ((torch.tensor([[0, 8]]), 8), "topk_ids"),
    ((torch.tensor([[0, -1]]), 8), "topk_ids"),
    ((torch.tensor([0, 1]), 8), "topk_ids"),
    ((torch.tensor([[0.0, 1.0]]), 8), "topk_ids"),
    ((torch.tensor([[0, 1]]), 0), "num_experts"),
])
@pytest.mark.meta_unsupported("the reference checks values on the host: a meta tensor has none", ids=("reference",))
@pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])
def test_bad_input_raises(impl, args, name, device):
    with pytest.raises(ValueError, match=name):
        impl.moe_permute(args[0].to(device), *args[1:])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_tokens=st.integers(0, 40), top_k=st.integers(1, 4), num_experts=st.integers(1, 12),
       seed=st.integers(0, 2**31))
def test_permute_property(num_tokens, top_k, num_experts, seed, device):
    """Any ids (repeats within a token included): the kernel is a stable counting sort, equal to the reference."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=gen, dtype=torch.int32)
    sorted_index, offsets = K.moe_permute(ids.to(device), num_experts)
    sorted_index, offsets = sorted_index.cpu(), offsets.cpu()
    check_permute_properties(ids, num_experts, sorted_index.numpy(), offsets.numpy())
    ref_index, ref_offsets = R.moe_permute(ids, num_experts)
    np.testing.assert_array_equal(sorted_index.numpy(), ref_index)
    np.testing.assert_array_equal(offsets.numpy(), ref_offsets)
