"""One request's state: its tokens, its status and the two counters the scheduler races.

``num_tokens`` counts every token the request holds (prompt + outputs); ``num_computed_tokens`` counts those
whose K/V are in the cache. The scheduler closes the gap in one step or several (chunked prefill); the step
that closes it samples a new token from the last position's logits, which opens the gap by one again (decode).
Preemption by recompute sets ``num_computed_tokens`` back to 0: the request keeps its tokens and recomputes
their K/V later (prefix-cache hits can make that cheap).
"""
from __future__ import annotations

import enum
from typing import Callable

from engine.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {RequestStatus.FINISHED_STOPPED: "stop", RequestStatus.FINISHED_LENGTH: "length",
                   RequestStatus.FINISHED_ABORTED: "abort"}

BlockHasher = Callable[[bytes | None, list[int]], bytes]


class Request:
    __slots__ = ("request_id", "params", "eos_token_id", "all_token_ids", "num_prompt_tokens",
                 "num_computed_tokens", "status", "block_size", "block_hashes", "_hasher", "num_cached_tokens",
                 "num_preemptions", "abort_reason", "generator", "arrival_index", "output_logprobs")

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                 eos_token_id: int | None = None, block_size: int = 16, block_hasher: BlockHasher | None = None,
                 generator=None, arrival_index: int = 0) -> None:
        if len(prompt_token_ids) == 0:
            raise ValueError("prompt: must hold at least one token")
        self.request_id = request_id
        self.params = params
        self.eos_token_id = eos_token_id
        self.all_token_ids: list[int] = [int(t) for t in prompt_token_ids]
        self.num_prompt_tokens = len(self.all_token_ids)
        self.num_computed_tokens = 0
        self.status = RequestStatus.WAITING
        self.block_size = block_size
        self.block_hashes: list[bytes] = []  # parent-chained hashes of the full blocks of all_token_ids
        self._hasher = block_hasher
        self.num_cached_tokens = -1  # prompt tokens served from the prefix cache at first admission
        self.num_preemptions = 0
        self.abort_reason: str | None = None
        self.generator = generator  # numpy Generator for temperature sampling
        self.arrival_index = arrival_index
        self.output_logprobs: list = []  # float32 log-probability of each sampled token
        self._hash_full_blocks()

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.all_token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status >= RequestStatus.FINISHED_STOPPED

    def append_output_token(self, token_id: int) -> None:
        self.all_token_ids.append(int(token_id))
        if self._hasher is not None and len(self.all_token_ids) % self.block_size == 0:
            self._hash_full_blocks()

    def _hash_full_blocks(self) -> None:
        if self._hasher is None:
            return
        bs = self.block_size
        for i in range(len(self.block_hashes), len(self.all_token_ids) // bs):
            parent = self.block_hashes[-1] if self.block_hashes else None
            self.block_hashes.append(self._hasher(parent, self.all_token_ids[i * bs:(i + 1) * bs]))

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.status.name}, computed={self.num_computed_tokens}/"
                f"{self.num_tokens}, prompt={self.num_prompt_tokens})")
