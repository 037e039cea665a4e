"""A hypothesis state machine over the real scheduler and block manager (stub forward pass).

Random configs with tiny caches (a block size of 1 to 16, 1 to 23 usable blocks, budgets down to one token),
random arrivals with random lengths (some sharing prefixes, some too long to ever fit), random aborts and
steps. After every step: the scheduler's and the pool's invariants. At the end the loop must drain: no
deadlock, no request lost or finished twice, every block free, and every request's tokens exactly those of an
unscheduled, unpreempted run (the stub's next token is a function of all the tokens before it, so a recompute
that read the wrong tokens would show); an aborted request holds a prefix of them.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.block_pool import hash_block_tokens
from engine.config import EngineConfig
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler

pytestmark = pytest.mark.host_only("engine logic without kernels (scheduler state machine, stub model)")

PREFIXES = ([], [7, 7, 7, 7, 7, 7, 7, 7, 7], [1, 2, 3, 4, 5])


def stub_token(tokens: list[int]) -> int:
    return (sum(tokens[-3:]) * 31 + 17 * len(tokens)) % 256


def expected_tokens(prompt: list[int], max_tokens: int) -> list[int]:
    toks = list(prompt)
    for _ in range(max_tokens):
        toks.append(stub_token(toks))
    return toks[len(prompt):]


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(block_size=st.sampled_from([1, 2, 3, 4, 16]), num_blocks=st.integers(2, 24),
                budget=st.integers(1, 32), seqs=st.integers(1, 4), threshold=st.integers(0, 8),
                caching=st.booleans())
    def setup(self, block_size, num_blocks, budget, seqs, threshold, caching):
        self.cfg = EngineConfig(block_size=block_size, num_blocks=num_blocks, max_num_seqs=seqs,
                                max_num_batched_tokens=budget, long_prefill_token_threshold=threshold,
                                enable_prefix_caching=caching, max_model_len=4096)
        self.sched = Scheduler(self.cfg)
        self.added: dict[str, tuple[list[int], int]] = {}
        self.finished: dict[str, Request] = {}

    @rule(prompt_len=st.integers(1, 20), max_tokens=st.integers(1, 8), prefix=st.sampled_from(range(len(PREFIXES))),
          salt=st.integers(0, 3))
    def add(self, prompt_len, max_tokens, prefix, salt):
        rid = f"r{len(self.added)}"
        prompt = (PREFIXES[prefix] + [(salt * 13 + j * 5) % 256 for j in range(prompt_len)])[:max(prompt_len, 1)]
        req = Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), eos_token_id=256,
                      block_size=self.cfg.block_size,
                      block_hasher=hash_block_tokens if self.cfg.enable_prefix_caching else None)
        self.sched.add_request(req)
        self.added[rid] = (prompt, max_tokens)

    @rule(data=st.data())
    def abort(self, data):
        live = sorted(self.sched.requests)
        if live and data.draw(st.integers(0, 2)) == 0:  # rarer than arrivals and steps
            assert self.sched.abort_request(data.draw(st.sampled_from(live)))

    @rule()
    def step(self):
        self._step()

    def _step(self) -> bool:
        sched, cfg = self.sched, self.cfg
        before = {rid: r.num_tokens for rid, r in sched.requests.items()}
        was_running = [r.request_id for r in sched.running]
        out = sched.schedule()
        assert out.num_scheduled_tokens <= cfg.max_num_batched_tokens
        assert len(out.scheduled) <= cfg.max_num_seqs
        if out.preempted:
            assert [r.request_id for r in out.preempted] == was_running[::-1][: len(out.preempted)]
            assert all(r.request_id in was_running for r, _ in out.scheduled), "admission in a preempting step"
        sampling = sched.sampling_requests(out)
        live = dict(sched.requests)
        for r in out.aborted:
            live[r.request_id] = r
        finished = sched.update_from_output(out, {r.request_id: stub_token(r.all_token_ids) for r in sampling})
        scheduled = {r.request_id for r, _ in out.scheduled}
        for rid, r in live.items():
            if rid in before:
                caught = rid in scheduled and r.num_computed_tokens == before[rid]
                assert r.num_tokens - before[rid] == int(caught)
        for r in finished:
            assert r.request_id not in self.finished, f"{r} finished twice"
            self.finished[r.request_id] = r
        progressed = bool(out.scheduled or out.aborted or out.preempted or finished)
        return progressed

    @invariant()
    def invariants_hold(self):
        if hasattr(self, "sched"):
            self.sched.check_invariants()

    def teardown(self):
        if not hasattr(self, "sched"):
            return
        for _ in range(5000):
            if not self.sched.has_unfinished_requests():
                break
            assert self._step(), "no progress: deadlock"
            self.sched.check_invariants()
        else:
            raise AssertionError("did not drain in 5000 steps: livelock")
        assert set(self.finished) == set(self.added), "a request was lost"
        kv = self.sched.kv
        assert kv.pool.num_free_blocks == kv.num_usable_blocks and not kv.req_blocks
        for rid, r in self.finished.items():
            prompt, max_tokens = self.added[rid]
            want = expected_tokens(prompt, max_tokens)
            if r.status == RequestStatus.FINISHED_LENGTH:
                assert r.output_token_ids == want, f"{r}: tokens changed by scheduling"
            else:
                assert r.status == RequestStatus.FINISHED_ABORTED and r.abort_reason
                assert r.output_token_ids == want[: r.num_output_tokens]
            if r.abort_reason and "KV blocks" in r.abort_reason:
                assert kv.blocks_needed(r.num_tokens) > kv.num_usable_blocks  # aborted only if it cannot fit


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
TestSchedulerMachine = SchedulerMachine.TestCase
