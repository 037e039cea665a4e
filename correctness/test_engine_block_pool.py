"""Block pool and KV cache manager: free queue, reference counts, prefix-cache hits, eviction order, caps."""
from __future__ import annotations

import pytest

from engine.block_pool import BlockPool, FreeBlockQueue, KVBlock, hash_block_tokens
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams

pytestmark = pytest.mark.host_only("engine logic without kernels (block pool, cache manager)")

BS = 4


def make_request(rid: str, tokens: list[int], caching: bool = True) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=8, ignore_eos=True), eos_token_id=256, block_size=BS,
                   block_hasher=hash_block_tokens if caching else None)


def test_free_queue_removes_from_the_middle_and_keeps_order():
    blocks = [KVBlock(i) for i in range(6)]
    q = FreeBlockQueue(blocks)
    q.remove(blocks[3])
    q.remove(blocks[0])
    q.append(blocks[3])
    assert [b.block_id for b in q] == [1, 2, 4, 5, 3]
    assert q.num_free == 5
    assert q.popleft() is blocks[1]
    with pytest.raises(RuntimeError):
        q.remove(blocks[1])  # not in the queue any more


def test_null_block_is_never_handed_out():
    pool = BlockPool(4)
    got = pool.get_new_blocks(3)
    assert sorted(b.block_id for b in got) == [1, 2, 3] and pool.null_block.block_id == 0
    with pytest.raises(RuntimeError):
        pool.get_new_blocks(1)
    pool.free_blocks(got)
    pool.check_invariants()
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(1)


def test_hashes_are_parent_chained_over_full_blocks_only():
    a = make_request("a", list(range(10)))  # two full blocks, 2 tokens left over
    b = make_request("b", [99] + list(range(1, 10)))  # differs in the first block only
    assert len(a.block_hashes) == 2
    assert a.block_hashes[1] != b.block_hashes[1]  # same tokens in block 1, different parent
    a.append_output_token(10)
    assert len(a.block_hashes) == 2
    a.append_output_token(11)  # block 2 is now full
    assert len(a.block_hashes) == 3
    assert a.block_hashes[2] == hash_block_tokens(a.block_hashes[1], [8, 9, 10, 11])


def test_hit_is_capped_below_the_last_token_and_revives_free_blocks():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = make_request("a", list(range(12)))  # exactly 3 full blocks
    assert kv.get_computed_blocks(a) == ([], 0)
    assert kv.allocate_slots(a, 12) is not None
    ids_a = kv.block_ids(a)
    a.num_computed_tokens = 12
    kv.free(a)
    free_before = kv.pool.num_free_blocks
    b = make_request("b", list(range(12)))
    hits, n = kv.get_computed_blocks(b)
    # the last token is always recomputed: only 2 of the 3 cached blocks count (8 tokens), not 12
    assert n == 8 and [h.block_id for h in hits] == ids_a[:2]
    assert all(h.ref_cnt == 0 for h in hits)  # they sit in the free queue
    assert kv.allocate_slots(b, 12 - n, hits, n) is not None
    # two hits revived out of the free queue + one new block (from the queue's head) for tokens 8..11
    assert kv.pool.num_free_blocks == free_before - 3
    assert kv.block_ids(b)[:2] == ids_a[:2] and kv.block_ids(b)[2] != ids_a[2]
    # a's third block still holds that hash, so b's copy stays out of the map
    assert kv.req_blocks["b"][2].block_hash is None
    kv.check_invariants([b])
    c = make_request("c", list(range(13)))  # the same 3 full blocks + 1 token: all 3 may hit now
    hits_c, n_c = kv.get_computed_blocks(c)
    assert n_c == 12 and [h.block_id for h in hits_c] == ids_a
    kv.free(b)
    kv.check_invariants([])


def test_third_block_hit_once_computed():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    a = make_request("a", list(range(12)))
    kv.allocate_slots(a, 12)
    a.num_computed_tokens = 12
    c = make_request("c", list(range(13)))
    hits, n = kv.get_computed_blocks(c)
    assert n == 12 and [h.block_id for h in hits] == kv.block_ids(a)
    assert all(h.ref_cnt == 1 for h in hits)  # shared with a running request: no free block consumed
    free = kv.pool.num_free_blocks
    assert kv.allocate_slots(c, 1, hits, n) is not None
    assert kv.pool.num_free_blocks == free - 1
    assert [h.ref_cnt for h in hits] == [2, 2, 2]
    kv.check_invariants([a, c])
    kv.free(a)
    kv.free(c)
    assert kv.pool.num_free_blocks == 15
    kv.check_invariants([])


def test_eviction_is_lru_with_tails_before_shared_heads():
    kv = KVCacheManager(num_blocks=7, block_size=BS)  # 6 usable blocks
    a = make_request("a", list(range(12)))  # blocks a0 a1 a2
    kv.allocate_slots(a, 12)
    ids_a = kv.block_ids(a)
    b = make_request("b", list(range(100, 112)))  # blocks b0 b1 b2
    kv.allocate_slots(b, 12)
    ids_b = kv.block_ids(b)
    kv.free(a)  # freed first: evicted first, tail first
    kv.free(b)
    order = [blk.block_id for blk in kv.pool.free_queue]
    assert order == ids_a[::-1] + ids_b[::-1]
    c = make_request("c", list(range(200, 204)) + [1])  # needs 2 blocks: evicts a's tail a2, then a1
    kv.allocate_slots(c, 5)
    assert kv.block_ids(c) == [ids_a[2], ids_a[1]]
    # a's head block survives (evicted last), so a prefix of a still hits
    again = make_request("a2", list(range(4)) + [7, 7])
    hits, n = kv.get_computed_blocks(again)
    assert n == 4 and hits[0].block_id == ids_a[0]
    assert kv.pool.num_evictions == 2
    kv.check_invariants([c])


def test_allocate_returns_none_and_changes_nothing_when_short():
    kv = KVCacheManager(num_blocks=4, block_size=BS)  # 3 usable blocks
    a = make_request("a", list(range(8)))
    assert kv.allocate_slots(a, 8) is not None
    b = make_request("b", list(range(50, 58)))
    free = kv.pool.num_free_blocks
    assert kv.allocate_slots(b, 8) is None
    assert kv.pool.num_free_blocks == free and "b" not in kv.req_blocks
    kv.check_invariants([a, b])


def test_no_caching_means_no_hits_and_no_map():
    kv = KVCacheManager(num_blocks=8, block_size=BS, enable_caching=False)
    a = make_request("a", list(range(12)), caching=False)
    kv.allocate_slots(a, 12)
    a.num_computed_tokens = 12
    b = make_request("b", list(range(12)), caching=False)
    assert kv.get_computed_blocks(b) == ([], 0)
    kv.free(a)
    assert not kv.pool.cached
    kv.check_invariants([])


def test_hits_revived_from_the_free_queue_count_against_free_blocks():
    kv = KVCacheManager(num_blocks=5, block_size=BS)  # 4 usable blocks
    a = make_request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    kv.free(a)  # 2 cached blocks in the free queue, 4 free in all
    b = make_request("b", list(range(8)) + [50] * 9)  # 17 tokens: 2 hits + 3 new blocks
    hits, n = kv.get_computed_blocks(b)
    assert n == 8 and kv.pool.num_free_blocks == 4
    # reviving the 2 hits leaves 2 free blocks for 3 new ones: it does not fit, and nothing changed
    assert kv.allocate_slots(b, 9, hits, n) is None
    assert kv.pool.num_free_blocks == 4 and all(h.ref_cnt == 0 for h in hits)
    kv.check_invariants([])
    b2 = make_request("b2", list(range(8)) + [50] * 8)  # 16 tokens: 2 hits + 2 new blocks fit exactly
    hits, n = kv.get_computed_blocks(b2)
    assert kv.allocate_slots(b2, 8, hits, n) is not None and kv.pool.num_free_blocks == 0
    kv.check_invariants([b2])
