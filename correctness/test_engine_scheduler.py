"""The scheduler with a stub model (a token per caught-up request): budgets, queues, preemption, aborts.

These run the real Scheduler and KVCacheManager; only the forward pass is replaced, so every step is
microseconds and the invariants can be checked after every one of thousands of steps.
"""
from __future__ import annotations

import random

import pytest

from engine.block_pool import hash_block_tokens
from engine.config import EngineConfig
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

pytestmark = pytest.mark.host_only("engine logic without kernels (scheduler with a stub model)")


def stub_token(req: Request) -> int:
    """A deterministic function of the request's tokens (what a model does), never EOS (256)."""
    return (sum(req.all_token_ids[-3:]) * 31 + req.num_tokens) % 256


def checked_step(sched: Scheduler) -> tuple:
    """schedule -> stub tokens -> update, with the per-step properties asserted. Returns (out, finished)."""
    cfg = sched.config
    before = {r.request_id: (r.num_computed_tokens, r.num_tokens) for r in sched.requests.values()}
    was_running = [r.request_id for r in sched.running]
    out = sched.schedule()
    if out.preempted:  # the victims are the latest running requests, latest first
        k = len(out.preempted)
        assert [r.request_id for r in out.preempted] == was_running[::-1][:k]
    assert out.num_scheduled_tokens == sum(n for _, n in out.scheduled) <= cfg.max_num_batched_tokens
    assert len(out.scheduled) <= cfg.max_num_seqs
    assert len({r.request_id for r, _ in out.scheduled}) == len(out.scheduled), "a request scheduled twice"
    for r, n in out.scheduled:
        assert r.status == RequestStatus.RUNNING and n >= 1
        assert r.num_computed_tokens + n <= r.num_tokens
        if cfg.long_prefill_token_threshold:
            assert n <= cfg.long_prefill_token_threshold
    if out.preempted:  # no admission in a step that preempted
        assert all(r.request_id in was_running for r, _ in out.scheduled), "admitted in a preempting step"
        assert all(r.request_id in was_running for r in out.preempted)
    sampling = sched.sampling_requests(out)
    finished = sched.update_from_output(out, {r.request_id: stub_token(r) for r in sampling})
    for r, n in out.scheduled:
        c0, t0 = before[r.request_id]
        c0 = r.num_computed_tokens - n  # recomputed / prefix hits may have moved the start
        caught_up = c0 + n == t0
        assert r.num_tokens == t0 + (1 if caught_up else 0), f"{r}: a token iff computed tokens caught up"
    sched.check_invariants()
    return out, finished


def new_request(i: int, prompt_len: int, max_tokens: int, block_size: int, caching: bool = True,
                prefix: list[int] = ()) -> Request:
    prompt = list(prefix) + [(i * 37 + j * 11) % 256 for j in range(prompt_len - len(prefix))]
    return Request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), eos_token_id=256,
                   block_size=block_size, block_hasher=hash_block_tokens if caching else None, arrival_index=i)


def run_to_end(sched: Scheduler, max_steps: int = 10_000) -> tuple[dict, list]:
    done, steps = {}, []
    for _ in range(max_steps):
        if not sched.has_unfinished_requests():
            break
        out, finished = checked_step(sched)
        steps.append(out)
        for r in finished:
            assert r.request_id not in done, "a request finished twice"
            done[r.request_id] = r
    else:
        raise AssertionError("the loop did not drain: deadlock or livelock")
    assert sched.kv.pool.num_free_blocks == sched.kv.num_usable_blocks, "blocks leaked after the run"
    return done, steps


def test_single_request_lifecycle_steps_equal_max_tokens():
    cfg = EngineConfig(block_size=4, num_blocks=32, max_num_batched_tokens=64)
    sched = Scheduler(cfg)
    req = new_request(0, 10, max_tokens=5, block_size=4)
    sched.add_request(req)
    trace = []
    while sched.has_unfinished_requests():
        out, _ = checked_step(sched)
        trace.append([n for _, n in out.scheduled])
    assert trace == [[10], [1], [1], [1], [1]]  # prefill + first token, then one token per decode step
    assert req.status == RequestStatus.FINISHED_LENGTH and req.num_output_tokens == 5


def test_chunked_prefill_emits_first_token_only_when_caught_up():
    cfg = EngineConfig(block_size=4, num_blocks=32, max_num_batched_tokens=64, long_prefill_token_threshold=4)
    sched = Scheduler(cfg)
    req = new_request(0, 10, max_tokens=2, block_size=4)
    sched.add_request(req)
    outputs = []
    while sched.has_unfinished_requests():
        out, _ = checked_step(sched)
        outputs.append((out.scheduled[0][1], req.num_output_tokens))
    assert outputs == [(4, 0), (4, 0), (2, 1), (1, 2)]


def test_budget_seqs_and_threshold_hold_under_random_load():
    rng = random.Random(1)
    cfg = EngineConfig(block_size=4, num_blocks=20, max_num_seqs=5, max_num_batched_tokens=24,
                       long_prefill_token_threshold=9)
    sched = Scheduler(cfg)
    for i in range(30):
        sched.add_request(new_request(i, rng.randint(1, 40), rng.randint(1, 12), 4))
    done, steps = run_to_end(sched)
    assert len(done) == 30 and all(r.status == RequestStatus.FINISHED_LENGTH for r in done.values())
    assert max(len(s.scheduled) for s in steps) == 5  # max_num_seqs was reached (the test is not vacuous)
    assert max(s.num_scheduled_tokens for s in steps) == 24  # and so was the token budget
    assert sum(len(s.preempted) for s in steps) > 0  # and memory ran short


def test_preemption_takes_the_latest_running_request_and_admits_nothing():
    cfg = EngineConfig(block_size=4, num_blocks=7, max_num_seqs=8, max_num_batched_tokens=64)  # 6 blocks
    sched = Scheduler(cfg)
    reqs = [new_request(i, 7, max_tokens=10, block_size=4, caching=False) for i in range(3)]
    for r in reqs:
        sched.add_request(r)
    out, _ = checked_step(sched)
    assert [r.request_id for r, _ in out.scheduled] == ["r0", "r1", "r2"]  # 2 blocks each: cache full
    out, _ = checked_step(sched)  # token 8 of each (index 7) still fits 2 blocks
    assert not out.preempted
    out, _ = checked_step(sched)  # index 8 needs a third block each: r2 (the latest) makes room for r0, r1
    assert out.preempted == [reqs[2]] and reqs[2].status == RequestStatus.PREEMPTED
    assert reqs[2].num_computed_tokens == 0 and sched.waiting[0] is reqs[2]
    assert [r.request_id for r, _ in out.scheduled] == ["r0", "r1"]
    done, _ = run_to_end(sched)
    assert all(len(r.output_token_ids) == 10 for r in done.values())
    assert reqs[2].num_preemptions >= 1


def test_preempted_tokens_match_an_unpressured_run():
    """Recompute after preemption continues exactly where it stopped (the stub reads every token)."""
    def run(num_blocks, caching):
        cfg = EngineConfig(block_size=4, num_blocks=num_blocks, max_num_seqs=8, max_num_batched_tokens=32,
                           enable_prefix_caching=caching)
        sched = Scheduler(cfg)
        for i in range(8):
            sched.add_request(new_request(i, 5 + 3 * i, 12, 4, caching))
        done, steps = run_to_end(sched)
        return {k: r.output_token_ids for k, r in done.items()}, sum(len(s.preempted) for s in steps)

    ample, p0 = run(200, True)
    tight, p1 = run(12, True)
    tight_nc, p2 = run(12, False)
    assert p0 == 0 and p1 > 0 and p2 > 0
    assert tight == ample and tight_nc == ample


def test_request_that_can_never_fit_is_aborted_with_a_reason():
    cfg = EngineConfig(block_size=4, num_blocks=5, max_num_batched_tokens=64)  # 4 blocks = 16 tokens
    sched = Scheduler(cfg)
    big = new_request(0, 17, 4, 4)
    small = new_request(1, 5, 2, 4)
    sched.add_request(big)
    sched.add_request(small)
    done, _ = run_to_end(sched)
    assert done["r0"].status == RequestStatus.FINISHED_ABORTED and "needs 5 KV blocks" in done["r0"].abort_reason
    assert done["r1"].status == RequestStatus.FINISHED_LENGTH


def test_request_that_outgrows_the_cache_is_aborted_not_hung():
    cfg = EngineConfig(block_size=4, num_blocks=4, max_num_batched_tokens=64)  # 3 blocks = 12 tokens
    sched = Scheduler(cfg)
    sched.add_request(new_request(0, 6, 20, 4))  # would need 26 tokens
    done, _ = run_to_end(sched)
    r = done["r0"]
    assert r.status == RequestStatus.FINISHED_ABORTED and r.num_output_tokens == 7  # 12 tokens + 1 sampled
    assert "needs 4 KV blocks" in r.abort_reason


@pytest.mark.parametrize("where", ["waiting", "running"])
def test_abort_request_frees_everything(where):
    cfg = EngineConfig(block_size=4, num_blocks=16, max_num_seqs=1, max_num_batched_tokens=64)
    sched = Scheduler(cfg)
    a, b = new_request(0, 9, 5, 4), new_request(1, 9, 5, 4)
    sched.add_request(a)
    sched.add_request(b)
    checked_step(sched)  # a runs, b waits (max_num_seqs = 1)
    victim = a if where == "running" else b
    assert sched.abort_request(victim.request_id)
    assert not sched.abort_request(victim.request_id)  # already gone
    assert victim.status == RequestStatus.FINISHED_ABORTED and victim.request_id not in sched.kv.req_blocks
    sched.check_invariants()
    out, finished = checked_step(sched)
    assert victim in finished  # reported by the next step
    done, _ = run_to_end(sched)
    assert set(done) == {"r0", "r1"} - {victim.request_id}


def test_prefix_hits_count_exactly_the_shared_full_blocks():
    cfg = EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=64)
    sched = Scheduler(cfg)
    shared = [200 + j for j in range(10)]  # 2 full blocks + 2 tokens
    a = new_request(0, 14, 3, 4, prefix=shared)
    sched.add_request(a)
    run_to_end(sched)
    b = new_request(1, 13, 3, 4, prefix=shared)
    sched.add_request(b)
    out, _ = checked_step(sched)
    assert out.num_prefix_hit_tokens == 8 and b.num_cached_tokens == 8
    assert out.scheduled == [(b, 13 - 8)]
    run_to_end(sched)


def test_duplicate_request_id_is_rejected():
    sched = Scheduler(EngineConfig())
    sched.add_request(new_request(0, 3, 1, 16))
    with pytest.raises(ValueError, match="request_id"):
        sched.add_request(new_request(0, 3, 1, 16))
