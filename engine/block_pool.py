"""Fixed-size KV blocks: a free queue, reference counts, a null block and the prefix-cache map.

The free queue is a doubly linked list (O(1) removal from the middle, which a prefix-cache hit on a free block
needs). Its head is the next block to hand out: a block freed earlier is evicted earlier (LRU), and because a
request frees its blocks tail first, a sequence's tail blocks are evicted before the heads that other
requests are likely to share. A free block keeps its hash, so a later hit can revive it (``touch``); it
leaves the cache only when it is handed out again (eviction). Block 0 is the null block: never handed out,
never cached, used to pad block tables.

Hashes are parent-chained over full blocks only: ``hash(block i) = sha256(hash(block i-1) || tokens)``, so a
hit on block i implies a hit on every block before it.
"""
from __future__ import annotations

import hashlib
from array import array
from typing import Iterable


def hash_block_tokens(parent: bytes | None, tokens: list[int]) -> bytes:
    """The parent-chained hash of one full block of token ids."""
    h = hashlib.sha256(parent or b"root")
    h.update(array("q", tokens).tobytes())
    return h.digest()


class KVBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: bytes | None = None
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None

    def __repr__(self) -> str:
        return f"KVBlock({self.block_id}, ref={self.ref_cnt}, cached={self.block_hash is not None})"


class FreeBlockQueue:
    """Doubly linked list of free blocks between two sentinels: popleft, append and remove are O(1)."""

    def __init__(self, blocks: Iterable[KVBlock]) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free = 0
        for b in blocks:
            self.append(b)

    def popleft(self) -> KVBlock:
        b = self._head.next_free
        if b is self._tail:
            raise RuntimeError("no free block left")
        self.remove(b)
        return b

    def remove(self, b: KVBlock) -> None:
        if b.prev_free is None or b.next_free is None:
            raise RuntimeError(f"{b} is not in the free queue")
        b.prev_free.next_free = b.next_free
        b.next_free.prev_free = b.prev_free
        b.prev_free = b.next_free = None
        self.num_free -= 1

    def append(self, b: KVBlock) -> None:
        last = self._tail.prev_free
        last.next_free = b
        b.prev_free = last
        b.next_free = self._tail
        self._tail.prev_free = b
        self.num_free += 1

    def __iter__(self):
        b = self._head.next_free
        while b is not self._tail:
            yield b
            b = b.next_free

    def __len__(self) -> int:
        return self.num_free


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks: need at least 2 (one is the null block), got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.null_block = self.free_queue.popleft()  # block 0
        self.cached: dict[bytes, KVBlock] = {}
        self.num_evictions = 0

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return self.free_queue.num_free

    def usage(self) -> float:
        """Fraction of usable blocks held by some request (cached free blocks count as free)."""
        return 1.0 - self.free_queue.num_free / self.num_usable_blocks

    def get_cached_block(self, block_hash: bytes) -> KVBlock | None:
        return self.cached.get(block_hash)

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Hand out ``n`` blocks from the head of the free queue (evicting their cached contents)."""
        if n > self.free_queue.num_free:
            raise RuntimeError(f"asked for {n} blocks, {self.free_queue.num_free} free")
        out = []
        for _ in range(n):
            b = self.free_queue.popleft()
            if b.block_hash is not None:
                self._evict(b)
            b.ref_cnt = 1
            out.append(b)
        return out

    def _evict(self, b: KVBlock) -> None:
        if self.cached.get(b.block_hash) is b:
            del self.cached[b.block_hash]
        b.block_hash = None
        self.num_evictions += 1

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on prefix-cache hits; a free one leaves the free queue (revival)."""
        for b in blocks:
            if b.ref_cnt == 0:
                self.free_queue.remove(b)
            b.ref_cnt += 1

    def free_blocks(self, blocks_in_eviction_order: Iterable[KVBlock]) -> None:
        """Drop one reference each; a block reaching 0 goes to the tail of the free queue (evicted last)."""
        for b in blocks_in_eviction_order:
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                self.free_queue.append(b)
            elif b.ref_cnt < 0:
                raise RuntimeError(f"{b} freed more often than taken")

    def cache_full_blocks(self, blocks: list[KVBlock], block_hashes: list[bytes], start: int, end: int) -> None:
        """Enter ``blocks[start:end]`` (full, their K/V computed by the end of this step) into the cache map.

        A hash already mapped to another block (the same prefix computed twice in one step) leaves the newer
        block uncached; it is freed like any other.
        """
        for i in range(start, end):
            b = blocks[i]
            if b.block_hash is not None:
                continue  # a prefix-cache hit, already in the map
            h = block_hashes[i]
            if h not in self.cached:
                self.cached[h] = b
                b.block_hash = h

    def check_invariants(self) -> None:
        """Raise AssertionError when the pool's bookkeeping is inconsistent (tests call it after every step)."""
        in_queue = set()
        prev = self.free_queue._head
        for b in self.free_queue:
            assert b.prev_free is prev, f"broken back link at {b}"
            assert b.block_id not in in_queue, f"{b} twice in the free queue"
            assert b.ref_cnt == 0, f"{b} is in the free queue with references"
            in_queue.add(b.block_id)
            prev = b
        assert self.free_queue._tail.prev_free is prev, "broken tail link"
        assert len(in_queue) == self.free_queue.num_free, "free count differs from the queue's length"
        null = self.null_block
        assert null.block_id == 0 and null.block_id not in in_queue and null.block_hash is None, "null block misused"
        for b in self.blocks[1:]:
            if b.block_id not in in_queue:
                assert b.ref_cnt > 0, f"{b} is neither free nor referenced (leaked)"
                assert b.prev_free is None and b.next_free is None, f"{b} has stale free-queue links"
            if b.block_hash is not None:
                assert self.cached.get(b.block_hash) is b, f"{b} has a hash but the map disagrees"
        for h, b in self.cached.items():
            assert b.block_hash == h, f"map entry points at {b} with another hash"
        if not self.enable_caching:
            assert not self.cached, "prefix caching is off but blocks are cached"
