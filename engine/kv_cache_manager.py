"""Which blocks each request holds: prefix-cache lookup, slot allocation, freeing.

``get_computed_blocks`` finds the longest cached prefix of full blocks, capped at ``num_tokens - 1`` tokens:
the last token is always recomputed because its logits produce the next token. ``allocate_slots`` takes
references on the hits and new blocks for the tokens to compute, or returns None (and changes nothing) when
the free blocks do not suffice; the scheduler then preempts or waits.
"""
from __future__ import annotations

from engine.block_pool import BlockPool, KVBlock
from engine.request import Request


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.num_cached_blocks: dict[str, int] = {}  # leading blocks of a request already in the cache map

    @property
    def num_usable_blocks(self) -> int:
        return self.pool.num_usable_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def usage(self) -> float:
        return self.pool.usage()

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The cached blocks of the request's longest cached prefix and the number of tokens they hold."""
        if not self.enable_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size  # the last token is always recomputed
        hits = []
        for h in request.block_hashes[:max_blocks]:
            b = self.pool.cached.get(h)
            if b is None:
                break
            hits.append(b)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVBlock] = (),
                       num_new_computed_tokens: int = 0) -> list[KVBlock] | None:
        """Blocks for ``num_new_tokens`` more tokens after the computed ones (and the hits), or None."""
        rid = request.request_id
        blocks = self.req_blocks.get(rid)
        held = 0 if blocks is None else len(blocks)
        total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        need = -(-total // self.block_size) - held - len(new_computed_blocks)
        pool = self.pool
        if need > 0 or new_computed_blocks:
            revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)  # hits that sit in the free queue
            if need > pool.free_queue.num_free - revived:
                return None
        if blocks is None:
            blocks = self.req_blocks[rid] = []
            self.num_cached_blocks[rid] = 0
        if new_computed_blocks:
            pool.touch(new_computed_blocks)
            blocks.extend(new_computed_blocks)
        new = pool.get_new_blocks(need) if need > 0 else []
        blocks.extend(new)
        if self.enable_caching:
            # Blocks that are full once this step's tokens are written; their K/V is written in this step,
            # before any attention of the same layer reads it, so another request may hit them right away.
            num_full = min(total // self.block_size, len(request.block_hashes))
            done = self.num_cached_blocks[rid]
            if num_full > done:
                pool.cache_full_blocks(blocks, request.block_hashes, done, num_full)
                self.num_cached_blocks[rid] = num_full
        return new

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first (so its tail is evicted before shared heads)."""
        blocks = self.req_blocks.pop(request.request_id, None)
        self.num_cached_blocks.pop(request.request_id, None)
        if blocks:
            self.pool.free_blocks(reversed(blocks))

    def block_ids(self, request: Request) -> list[int]:
        return [b.block_id for b in self.req_blocks.get(request.request_id, ())]

    def check_invariants(self, live: list[Request] = ()) -> None:
        """Pool invariants, and every block's reference count equals the number of requests holding it."""
        self.pool.check_invariants()
        refs: dict[int, int] = {}
        for rid, blocks in self.req_blocks.items():
            ids = [b.block_id for b in blocks]
            assert len(set(ids)) == len(ids), f"request {rid} holds a block twice: {ids}"
            assert 0 not in ids, f"request {rid} holds the null block"
            for i in ids:
                refs[i] = refs.get(i, 0) + 1
        for b in self.pool.blocks[1:]:
            assert b.ref_cnt == refs.get(b.block_id, 0), (
                f"{b}: ref_cnt {b.ref_cnt} but held by {refs.get(b.block_id, 0)} requests")
        if live:
            live_ids = {r.request_id for r in live}
            assert set(self.req_blocks) <= live_ids, f"blocks held by gone requests {set(self.req_blocks) - live_ids}"
            for r in live:
                held = len(self.req_blocks.get(r.request_id, ()))
                need = self.blocks_needed(r.num_computed_tokens)
                assert held >= need, f"{r} holds {held} blocks, its computed tokens need {need}"
