"""Who runs this step and how many tokens each computes (vLLM V1: no prefill/decode phases, only counters).

Each step: running requests first, in admission order, each asking for ``num_tokens - num_computed_tokens``
tokens capped by ``long_prefill_token_threshold`` and the remaining token budget. When the KV cache cannot
hold a request's new tokens, the latest running request is preempted (its blocks freed, its computed tokens
forgotten: recompute) until it fits, the request itself being the last resort. Then, unless that step
preempted, waiting requests are admitted in order while the budget, ``max_num_seqs`` and the cache allow,
their cached prefix counted as computed. A request that cannot fit even an empty cache finishes "abort".
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.config import EngineConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request, RequestStatus
from engine.sampler import check_stop


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # batch order: (request, new tokens)
    num_scheduled_tokens: int = 0
    preempted: list[Request] = field(default_factory=list)
    aborted: list[Request] = field(default_factory=list)  # could never fit the cache
    num_prefix_hit_tokens: int = 0  # tokens newly admitted requests got from the prefix cache
    new_block_ids: list[int] = field(default_factory=list)  # blocks handed out this step (stale contents)


class Scheduler:
    def __init__(self, config: EngineConfig, kv: KVCacheManager | None = None) -> None:
        self.config = config
        self.kv = kv or KVCacheManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}  # every unfinished request
        self._finished_aborts: list[Request] = []  # aborted by the user, reported by the next update
        self.num_preemptions = 0
        self.num_prefix_hit_tokens = 0

    # -- queue management ----------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id: {request.request_id!r} is already in the engine")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> bool:
        """Finish an unfinished request as "abort" now (its blocks freed); False if it is unknown/finished."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        req.abort_reason = "aborted by the user"
        self._finish(req, RequestStatus.FINISHED_ABORTED)
        self._finished_aborts.append(req)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or bool(self._finished_aborts)

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.status = status
        self.kv.free(req)
        del self.requests[req.request_id]

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # -- one step ------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        cfg, kv = self.config, self.kv
        out = SchedulerOutput()
        budget = cfg.max_num_batched_tokens
        threshold = cfg.long_prefill_token_threshold
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = req.num_tokens - req.num_computed_tokens
            if 0 < threshold < n:
                n = threshold
            if n > budget:
                n = budget
            while (new := kv.allocate_slots(req, n)) is None:
                victim = running.pop()  # the latest running request has the lowest priority
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            else:
                out.scheduled.append((req, n))
                if new:
                    out.new_block_ids.extend(b.block_id for b in new)
                budget -= n
                i += 1
                continue
            break  # the request preempted itself: nothing after it is left to schedule

        if not out.preempted:
            while self.waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                req = self.waiting[0]
                need = kv.blocks_needed(req.num_tokens)
                if need > kv.num_usable_blocks:
                    self.waiting.popleft()
                    req.abort_reason = (f"needs {need} KV blocks for {req.num_tokens} tokens, the cache has "
                                        f"{kv.num_usable_blocks} of {cfg.block_size} tokens")
                    self._finish(req, RequestStatus.FINISHED_ABORTED)
                    out.aborted.append(req)
                    continue
                hits, num_hit = kv.get_computed_blocks(req)
                n = req.num_tokens - num_hit
                if 0 < threshold < n:
                    n = threshold
                if n > budget:
                    n = budget
                new = kv.allocate_slots(req, n, hits, num_hit)
                if new is None:
                    break  # wait for running requests to free blocks (first come, first served)
                out.new_block_ids.extend(b.block_id for b in new)
                self.waiting.popleft()
                req.num_computed_tokens = num_hit
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = num_hit
                out.num_prefix_hit_tokens += num_hit
                req.status = RequestStatus.RUNNING
                running.append(req)
                out.scheduled.append((req, n))
                budget -= n
        out.num_scheduled_tokens = cfg.max_num_batched_tokens - budget
        self.num_prefix_hit_tokens += out.num_prefix_hit_tokens
        return out

    def update_from_output(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance the counters by the computed tokens; append sampled tokens; finish stopped requests.

        ``sampled`` holds a token for exactly the requests whose computed tokens caught up this step.
        Returns the requests that finished (stopped, length-capped, or aborted) since the last update.
        """
        finished = self._finished_aborts + out.aborted
        self._finished_aborts = []
        max_len = self.config.max_model_len
        any_done = False
        for req, n in out.scheduled:
            req.num_computed_tokens += n
            if req.num_computed_tokens != req.num_tokens:
                continue  # a partial prefill chunk: no token
            req.append_output_token(sampled[req.request_id])
            status = check_stop(req, max_len)
            if status is not None:
                self._finish(req, status)
                finished.append(req)
                any_done = True
        if any_done:
            self.running = [r for r in self.running if r.status == RequestStatus.RUNNING]
        return finished

    def sampling_requests(self, out: SchedulerOutput) -> list[Request]:
        """The scheduled requests whose computed tokens catch up this step (they sample), in batch order."""
        return [r for r, n in out.scheduled if r.num_computed_tokens + n == r.num_tokens]

    def check_invariants(self) -> None:
        """Queues, statuses, counters and blocks agree (tests call this after every step)."""
        ids_w = [r.request_id for r in self.waiting]
        ids_r = [r.request_id for r in self.running]
        both = ids_w + ids_r
        assert len(both) == len(set(both)), f"a request sits in two queues or twice in one: {both}"
        assert set(both) == set(self.requests), (
            f"unfinished requests {set(self.requests)} differ from the queued ones {set(both)}")
        assert len(self.running) <= self.config.max_num_seqs, "more running requests than max_num_seqs"
        for r in self.waiting:
            assert r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED), f"{r} is in the waiting queue"
            assert r.num_computed_tokens == 0, f"waiting {r} has computed tokens"
            assert r.request_id not in self.kv.req_blocks, f"waiting {r} holds blocks"
        for r in self.running:
            assert r.status == RequestStatus.RUNNING, f"{r} is in the running queue"
            assert 0 <= r.num_computed_tokens < r.num_tokens, f"running {r}: counters out of range"
        self.kv.check_invariants(list(self.requests.values()))
