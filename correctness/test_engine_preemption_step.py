"""A step that preempts admits nobody, even when the freed blocks would fit a waiting request.

The scheduler's own tests check this after every step, but in their loads a preempting step never leaves room
for a waiting request, so admission after a preemption could not be told apart from "nothing fitted". Here
(2 usable blocks, a 2-token budget, three requests) the preemption of r1 leaves a free block and the budget for
r2's next chunk: admitting r2 right away would fit, and must not happen (the preempted request goes first).
"""
from __future__ import annotations

import pytest
from engine.config import EngineConfig
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

pytestmark = pytest.mark.host_only("engine logic without kernels (scheduler only)")

BS = 4


def make(i: int, prompt_len: int) -> Request:
    return Request(f"r{i}", [(i * 37 + j * 11) % 256 for j in range(prompt_len)],
                   SamplingParams(max_tokens=6, ignore_eos=True), eos_token_id=256, block_size=BS, arrival_index=i)


def test_no_admission_in_a_preempting_step_even_when_it_would_fit():
    cfg = EngineConfig(block_size=BS, num_blocks=3, max_num_seqs=8, max_num_batched_tokens=2,
                       enable_prefix_caching=False)
    sched = Scheduler(cfg)
    for i, n in enumerate([1, 4, 1]):
        sched.add_request(make(i, n))
    room_after_preemption = 0  # preempting steps after which a waiting request's next chunk would have fitted
    for _ in range(200):
        if not sched.has_unfinished_requests():
            break
        was_running = {r.request_id for r in sched.running}
        out = sched.schedule()
        if out.preempted:
            assert all(r.request_id in was_running for r, _ in out.scheduled), (
                f"admitted {[r.request_id for r, _ in out.scheduled if r.request_id not in was_running]} "
                f"in a step that preempted {[r.request_id for r in out.preempted]}")
            budget = cfg.max_num_batched_tokens - out.num_scheduled_tokens
            free = sched.kv.pool.num_free_blocks
            fits = [r for r in sched.waiting if r not in out.preempted
                    and sched.kv.blocks_needed(min(r.num_tokens, budget)) <= free]
            room_after_preemption += bool(budget > 0 and fits)
        sampled = {r.request_id: 1 for r in sched.sampling_requests(out)}
        sched.update_from_output(out, sampled)
        sched.check_invariants()
    else:
        raise AssertionError("the run did not drain")
    assert room_after_preemption >= 1, "the scenario never left room after a preemption: the test checks nothing"
