"""The input generator must really poison what kernels must not read, and really scatter block tables."""
import numpy as np
import pytest
import torch

from kernels.testing.paged import LOUD_LOGIT, make_paged_batch
from kernels import reference as R

pytestmark = pytest.mark.host_only("the input builder's poison and block tables, checked on host tensors (and the reference): no kernel")


def owned_mask(batch):
    nb, bs = batch.k_cache.shape[:2]
    owned = np.zeros((nb, bs), dtype=bool)
    for i, n in enumerate(batch.seq_lens.tolist()):
        for t in range(n):
            owned[batch.block_table[i, t // bs], t % bs] = True
    return owned


@pytest.mark.parametrize("layout", ["separate", "stacked", "interleaved"])
def test_every_unowned_slot_is_nan(layout):
    b = make_paged_batch([0, 1, 7, 20], [0, 1, 3, 20], num_q_heads=4, num_kv_heads=2, head_dim=32,
                         block_size=6, layout=layout)
    owned = torch.from_numpy(owned_mask(b))
    for cache in (b.k_cache, b.v_cache):
        assert torch.isnan(cache[~owned]).all()
        assert not torch.isnan(cache[owned]).any()
    assert b.k_cache.stride(-1) == 1


def test_fp8_cache_keeps_nan_poison():
    b = make_paged_batch([5, 9], num_q_heads=2, num_kv_heads=1, head_dim=32, block_size=4, kv_dtype="float8_e4m3fn",
                         k_scale=0.5)
    owned = torch.from_numpy(owned_mask(b))
    assert torch.isnan(b.k_cache.float()[~owned]).all()
    assert b.kwargs["k_scale"] == 0.5


def test_block_tables_are_not_sequential_and_tails_are_garbage():
    b = make_paged_batch([40, 33, 50], num_q_heads=2, num_kv_heads=1, head_dim=32, block_size=4, seed=3)
    bt = b.block_table.numpy()
    used = [bt[i, : -(-n // 4)] for i, n in enumerate(b.seq_lens.tolist())]
    flat = np.concatenate(used)
    assert len(set(flat.tolist())) == flat.size  # no block shared
    assert (np.diff(flat) != 1).sum() > flat.size // 2  # mostly non-consecutive
    for i, n in enumerate(b.seq_lens.tolist()):
        tail = bt[i, -(-n // 4):]
        assert ((tail < 0) | (tail >= b.k_cache.shape[0])).all()


def test_loud_future_token_dominates_any_query_that_sees_it():
    """Only the last query of a sequence may see the loud key; in the reference it takes nearly all weight."""
    b = make_paged_batch([24], [24], num_q_heads=2, num_kv_heads=1, head_dim=64, block_size=8, dtype="float32",
                         loud_future=True)
    out = R.paged_prefill(*b.prefill_args())
    last_v = R.gather_kv(b.k_cache, b.v_cache, b.block_table[0].numpy(), 24)[1][-1]  # [Hkv, D]
    # the last query attends mostly to the loud key
    assert np.abs(out[-1] - last_v[0]).max() < 0.5
    # a query that wrongly saw it would look like it: the others do not
    assert np.abs(out[:-1] - last_v[0]).max(axis=-1).min() > 0.5
    assert LOUD_LOGIT > 20
