"""``LLMEngine``: add requests, then ``step()`` = schedule -> prepare -> forward -> sample -> update.

Every scheduling choice (chunk sizes, prefix-cache hits, preemption and recompute, batch composition) changes
when tokens are computed and where their K/V live, never which tokens come out; the tests hold it to that.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from engine.block_pool import hash_block_tokens
from engine.config import EngineConfig, ModelConfig
from engine.request import Request
from engine.sampler import chosen_logprobs, sample
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.stats import EngineStats, StepStats
from engine.tokenizer import ByteTokenizer
from kernels.nvtx import nvtx_range


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    text: str
    finish_reason: str | None  # "stop", "length" or "abort"
    abort_reason: str | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    logprobs: np.ndarray | None = None  # float32 [len(output_token_ids)]: each chosen token's log-probability


class LLMEngine:
    def __init__(self, model_config: ModelConfig, *, backend: str = "triton", block_size: int = 16,
                 num_blocks: int = 256, max_num_seqs: int = 16, max_num_batched_tokens: int = 256,
                 long_prefill_token_threshold: int = 0, enable_prefix_caching: bool = True, seed: int = 0,
                 batch_invariant: bool = False) -> None:
        if not isinstance(model_config, ModelConfig):
            raise ValueError(f"model_config: must be an engine.ModelConfig, got {type(model_config).__name__}")
        self.model_config = model_config
        self.config = EngineConfig(block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens,
                                   long_prefill_token_threshold=long_prefill_token_threshold,
                                   enable_prefix_caching=enable_prefix_caching,
                                   max_model_len=model_config.max_model_len, seed=seed,
                                   batch_invariant=batch_invariant)
        from engine.model_runner import ModelRunner  # imports torch and the kernels

        self.tokenizer = ByteTokenizer(model_config.eos_token_id)
        self.scheduler = Scheduler(self.config)
        self.runner = ModelRunner(model_config, self.config, backend)
        self.stats = EngineStats()
        self.step_count = 0
        self.last_scheduler_output = None  # the latest step's SchedulerOutput (tests and debugging read it)
        self._ids = itertools.count()
        self._seeds = np.random.SeedSequence(seed)

    # -- requests ------------------------------------------------------------------------------------------
    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: must be an engine.SamplingParams, got {type(params).__name__}")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        vocab, max_len = self.model_config.vocab_size, self.model_config.max_model_len
        if not ids:
            raise ValueError("prompt: must hold at least one token")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt: token ids must be in [0, {vocab}), got range [{min(ids)}, {max(ids)}]")
        if len(ids) >= max_len:
            raise ValueError(f"prompt: {len(ids)} tokens leave no room below max_model_len {max_len}")
        rid = str(next(self._ids)) if request_id is None else str(request_id)
        seed = params.seed if params.seed is not None else self._seeds.spawn(1)[0]
        req = Request(rid, ids, params, eos_token_id=self.model_config.eos_token_id, block_size=self.config.block_size,
                      block_hasher=hash_block_tokens if self.config.enable_prefix_caching else None,
                      generator=np.random.default_rng(seed), arrival_index=self.step_count)
        self.scheduler.add_request(req)
        self.stats.on_arrival(rid, self.step_count, time.perf_counter())
        return rid

    def abort_request(self, request_id: str) -> bool:
        """Finish a request as "abort"; it is returned by the next ``step()``. False if unknown or finished."""
        return self.scheduler.abort_request(str(request_id))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # -- the loop ------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One engine step; returns the requests that finished in it."""
        self.step_count += 1
        sched = self.scheduler
        t0 = time.perf_counter()
        with nvtx_range("step", "engine"):
            with nvtx_range("schedule", "engine"):
                out = self.last_scheduler_output = sched.schedule()
                num_running, num_waiting = len(sched.running), len(sched.waiting)
            sampled: dict[str, int] = {}
            if out.scheduled:
                with nvtx_range("prepare", "engine"):
                    ctx = self.runner.prepare(out, sched.kv)
                with nvtx_range("forward", "engine"):
                    logits = self.runner.execute(ctx)
                with nvtx_range("sample", "engine"):
                    reqs = sched.sampling_requests(out)
                    tokens = sample(logits, reqs, self.runner.backend.sampler())
                    for r, lp in zip(reqs, chosen_logprobs(logits, tokens)):
                        r.output_logprobs.append(lp)
                    sampled = dict(zip((r.request_id for r in reqs), tokens))
            elif sched.waiting and not (out.aborted or out.preempted):
                raise RuntimeError("scheduler made no progress with requests waiting (a bug: report it)")
            with nvtx_range("update", "engine"):
                decodes = sum(1 for r, n in out.scheduled if n == 1 and r.num_computed_tokens == r.num_tokens - 1
                              and r.num_output_tokens > 0 and r.request_id in sampled)
                finished = sched.update_from_output(out, sampled)
        now = time.perf_counter()
        for rid in sampled:
            self.stats.on_token(rid, self.step_count, now)
        self.stats.steps.append(StepStats(
            step=self.step_count, num_running=num_running, num_waiting=num_waiting,
            num_scheduled_reqs=len(out.scheduled),
            num_scheduled_tokens=out.num_scheduled_tokens, num_decode_reqs=decodes, num_preempted=len(out.preempted),
            num_prefix_hit_tokens=out.num_prefix_hit_tokens, kv_usage=sched.kv.usage(), num_finished=len(finished),
            seconds=now - t0))
        return [self._output(r) for r in finished]

    def _output(self, r: Request) -> RequestOutput:
        return RequestOutput(r.request_id, r.prompt_token_ids, r.output_token_ids,
                             self.tokenizer.decode(r.output_token_ids), r.status.finish_reason, r.abort_reason,
                             max(r.num_cached_tokens, 0), r.num_preemptions,
                             np.array(r.output_logprobs, dtype=np.float32))

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run ``prompts`` (strs or token-id lists) to completion; outputs in prompt order."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        plist = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"params: {len(plist)} SamplingParams for {len(prompts)} prompts")
        return self.run_to_completion([self.add_request(p, sp) for p, sp in zip(prompts, plist)])

    def run_to_completion(self, request_ids: list[str]) -> list[RequestOutput]:
        """Step until every request in ``request_ids`` (already added) has finished; outputs in that order."""
        pending, done = set(request_ids), {}
        while pending:
            if not self.has_unfinished_requests():
                raise ValueError(f"request_ids: {sorted(pending)} are not unfinished requests of this engine")
            for o in self.step():
                if o.request_id in pending:
                    pending.discard(o.request_id)
                    done[o.request_id] = o
        return [done[i] for i in request_ids]
