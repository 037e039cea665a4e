"""End-to-end batch invariance: a "needle" prompt alone vs at a random slot among other requests in the engine.

The crowd run has chunked prefill (``long_prefill_token_threshold``), prefix caching (some neighbours share
the needle's prefix, and one of them arrives first) and preemption (a KV pool too small for the crowd) all
active; ``needle_run`` returns the needle's tokens and logprobs and what the crowd run actually exercised, so
a caller can refuse a run in which none of it happened.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine import LLMEngine, ModelConfig, SamplingParams

NEEDLE = "Invariance needle: the same bits, whatever the batch."  # 53 bytes
BLOCK = 4


@dataclass
class NeedleRun:
    tokens: list[int]
    logprobs: np.ndarray
    num_preemptions: int  # over the whole run
    prefix_hit_tokens: int
    chunked_steps: int  # steps that computed a partial prefill of some request
    mixed_steps: int  # steps holding both prefill and decode tokens
    steps: int


def _engine(num_blocks: int, batch_invariant: bool, backend: str) -> LLMEngine:
    return LLMEngine(ModelConfig(), backend=backend, block_size=BLOCK, num_blocks=num_blocks, max_num_seqs=8,
                     max_num_batched_tokens=48, long_prefill_token_threshold=16, enable_prefix_caching=True,
                     batch_invariant=batch_invariant)


def needle_run(num_others: int, *, batch_invariant: bool = True, seed: int = 0, max_tokens: int = 5,
               backend: str = "triton", num_blocks: int | None = None) -> NeedleRun:
    """The needle among ``num_others`` requests (0 = alone, with ample memory) at a random slot."""
    rng = np.random.default_rng(seed)
    prompts, params = [], []
    for i in range(num_others):
        n = int(rng.integers(1, 40))
        text = bytes(rng.integers(32, 127, n).tolist()).decode()
        if i % 4 == 0:
            text = NEEDLE[: 8 + int(rng.integers(0, 30))] + text  # shares a prefix with the needle
        prompts.append(text)
        params.append(SamplingParams(max_tokens=int(rng.integers(1, 8)), ignore_eos=True))
    slot = int(rng.integers(1, num_others + 1)) if num_others else 0  # after the first prefix sharer
    prompts.insert(slot, NEEDLE)
    params.insert(slot, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    # a crowd gets about a third of the blocks it would need at once: preemptions
    need = sum(-(-(len(p.encode()) + sp.max_tokens) // BLOCK) for p, sp in zip(prompts, params))
    blocks = num_blocks or (256 if num_others == 0 else max(need // 3, 40))
    eng = _engine(blocks, batch_invariant, backend)
    ids = [eng.add_request(p, sp) for p, sp in zip(prompts, params)]
    done, chunked, mixed = {}, 0, 0
    while eng.has_unfinished_requests():
        for o in eng.step():
            done[o.request_id] = o
        sched = eng.last_scheduler_output.scheduled
        chunked += any(r.num_computed_tokens < r.num_prompt_tokens for r, _ in sched)
        mixed += any(n == 1 for _, n in sched) and any(n > 1 for _, n in sched)
    needle = done[ids[slot]]
    st = eng.stats.steps
    return NeedleRun(tokens=needle.output_token_ids, logprobs=needle.logprobs,
                     num_preemptions=sum(s.num_preempted for s in st),
                     prefix_hit_tokens=sum(s.num_prefix_hit_tokens for s in st),
                     chunked_steps=chunked, mixed_steps=mixed, steps=len(st))


def same_bits(a: NeedleRun, b: NeedleRun) -> bool:
    return a.tokens == b.tokens and a.logprobs.dtype == b.logprobs.dtype == np.float32 and \
        np.array_equal(a.logprobs.view(np.uint32), b.logprobs.view(np.uint32))
