"""MoE alignment limits seen in the field (vLLM and SGLang issues, 2025-2026): expert counts around powers of two
(1, 255, 256, 257, 1023, 1024, 1025), top-k equal to the expert count, and more (token, slot) pairs than a
16-bit index holds. ``route`` and ``moe_permute`` of the implementation under test against the reference,
exactly (ids and permutation bitwise; weights within the float32 softmax budget of ``test_route.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T
from correctness.test_moe_permute import check_permute_properties
from correctness.test_route import check_route
from kernels import reference as R


@pytest.mark.parametrize("num_experts", [1, 255, 256, 257, 1023, 1024, 1025])
def test_route_and_permute_at_expert_counts_around_powers_of_two(num_experts, device):
    top_k = min(8, num_experts)
    logits = torch.randn(5, num_experts, generator=torch.Generator().manual_seed(num_experts)) * 2
    ids, _ = check_route(logits, top_k, True, device)
    assert int(ids.max()) < num_experts and int(ids.min()) >= 0
    sorted_index, offsets = T.moe_permute(ids.to(device), num_experts)
    ref_index, ref_offsets = R.moe_permute(ids, num_experts)
    assert offsets.shape[0] == num_experts + 1
    np.testing.assert_array_equal(sorted_index.cpu().numpy(), ref_index)
    np.testing.assert_array_equal(offsets.cpu().numpy(), ref_offsets)


@pytest.mark.parametrize("num_experts", [2, 8])
def test_top_k_equal_to_the_expert_count(num_experts, device):
    """Every expert chosen by every token: ids a permutation of [0, E) per row, weights the whole softmax."""
    logits = torch.randn(7, num_experts, generator=torch.Generator().manual_seed(3))
    ids, weights = check_route(logits, num_experts, True, device)
    assert (np.sort(ids.numpy(), axis=1) == np.arange(num_experts)).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(7), atol=1e-6, rtol=0)
    sorted_index, offsets = T.moe_permute(ids.to(device), num_experts)
    assert (np.diff(offsets.cpu().numpy()) == 7).all()


def test_permute_more_pairs_than_a_16_bit_index_holds(device):
    """70 000 (token, slot) pairs over 64 experts: offsets and sorted indices past 65 535 stay exact."""
    num_tokens, top_k, num_experts = 8750, 8, 64
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(num_tokens)]).to(torch.int32)
    sorted_index, offsets = T.moe_permute(ids.to(device), num_experts)
    ref_index, ref_offsets = R.moe_permute(ids, num_experts)
    assert int(offsets[-1]) == num_tokens * top_k > 65535
    np.testing.assert_array_equal(offsets.cpu().numpy(), ref_offsets)
    np.testing.assert_array_equal(sorted_index.cpu().numpy(), ref_index)
    check_permute_properties(ids, num_experts, sorted_index.cpu().numpy(), offsets.cpu().numpy())
