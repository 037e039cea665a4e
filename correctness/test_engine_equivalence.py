"""Scheduling changes timing and memory, never tokens.

The same prompts (ragged, some sharing a prefix) run under every scheduling regime: ample memory, chunked
prefill, prefix caching, few sequences per step, preemption pressure with and without caching, on the
reference backend and (fewer, shorter prompts) on the Triton kernels. Every run checks, after every step: the
token budget and ``max_num_seqs``; each unfinished request in exactly one queue; a token iff the request's
computed tokens caught up; the pool's invariants; and at the end every block is free. The ample run is itself
checked against an independent oracle: a float64 dense forward that recomputes the whole sequence each token
with no paging, no cache and no scheduler.
"""
from __future__ import annotations

import pytest
import torch

from engine import LLMEngine, ModelConfig, SamplingParams
from engine.model import Model
from kernels.nvtx import record_trace

TINY = ModelConfig()
BS = 4
SHARED = "The quick brown fox jumps over "  # 31 bytes: 7 full blocks of 4, 3 bytes over
PROMPTS = [SHARED + "the lazy dog", "a", SHARED + "a cat", "Pack my box with five dozen liquor jugs",
           "xyz", SHARED[:13]]
MAX_TOKENS = [8, 8, 6, 8, 7, 8]
AMPLE = dict(num_blocks=256, max_num_seqs=16, max_num_batched_tokens=512, long_prefill_token_threshold=0,
             enable_prefix_caching=False)


def run_checked(prompts, max_tokens, backend="reference", model=TINY, **overrides):
    """Run to completion checking the per-step invariants; returns (token lists in prompt order, engine)."""
    kw = {**AMPLE, **overrides}
    eng = LLMEngine(model, backend=backend, block_size=BS, **kw)
    eng.runner.debug = True  # reused blocks start as NaN (stale K/V cannot hide an overread); finite checks
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in max_tokens]
    ids = [eng.add_request(p, sp) for p, sp in zip(prompts, params)]
    sched, done = eng.scheduler, {}
    for _ in range(2000):
        if not eng.has_unfinished_requests():
            break
        before = {rid: r.num_tokens for rid, r in sched.requests.items()}
        live = dict(sched.requests)
        for o in eng.step():
            assert o.request_id not in done, "finished twice"
            done[o.request_id] = o
        out, st = eng.last_scheduler_output, eng.stats.steps[-1]
        assert st.num_scheduled_tokens <= kw["max_num_batched_tokens"]
        assert st.num_scheduled_reqs <= kw["max_num_seqs"]
        if kw["long_prefill_token_threshold"]:
            assert all(n <= kw["long_prefill_token_threshold"] for _, n in out.scheduled)
        scheduled = {r.request_id for r, _ in out.scheduled}
        for rid, req in live.items():
            emitted = req.num_tokens - before[rid]
            caught_up = rid in scheduled and req.num_computed_tokens == before[rid]
            assert emitted == int(caught_up), f"{req}: emitted {emitted} tokens, caught up: {caught_up}"
        sched.check_invariants()
    else:
        raise AssertionError("the engine did not drain")
    kv = sched.kv
    assert kv.pool.num_free_blocks == kv.num_usable_blocks and not kv.req_blocks, "blocks leaked"
    kv.pool.check_invariants()
    assert all(done[i].finish_reason == "length" for i in ids)
    return [done[i].output_token_ids for i in ids], eng


# ---------------------------------------------------------------------------------------- the dense oracle

def dense_greedy(model: Model, prompt: list[int], max_tokens: int) -> list[int]:
    ids = list(prompt)
    for _ in range(max_tokens):
        ids.append(int(torch.argmax(dense_logits(model, ids))))
    return ids[len(prompt):]


def dense_logits(model: Model, ids: list[int]) -> torch.Tensor:
    """Last-position logits of a float64 full-sequence forward: causal GQA softmax attention, dense experts."""
    cfg = model.cfg
    f = torch.float64
    t, d, hq, hkv = len(ids), cfg.head_dim, cfg.num_q_heads, cfg.num_kv_heads
    pos = torch.arange(t, dtype=f)
    inv_freq = cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=f) / d)
    ang = pos[:, None] * inv_freq[None, :]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * w.to(f)

    x = model.embed[torch.tensor(ids)].to(f)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for L in model.layers:
        h = norm(x, L.attn_norm)
        q = rope((h @ L.wq.to(f).T).view(t, hq, d))
        k = rope((h @ L.wk.to(f).T).view(t, hkv, d)).repeat_interleave(hq // hkv, dim=1)
        v = (h @ L.wv.to(f).T).view(t, hkv, d).repeat_interleave(hq // hkv, dim=1)
        s = torch.einsum("qhd,khd->hqk", q, k) * d ** -0.5
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
        x = x + torch.einsum("hqk,khd->qhd", p, v).reshape(t, -1) @ L.wo.to(f).T
        h = norm(x, L.mlp_norm)
        probs = torch.softmax(h @ L.router.to(f).T, dim=-1)
        top = torch.sort(-probs, dim=-1, stable=True).indices[:, : cfg.top_k]  # ties to the lower expert id
        w = torch.gather(probs, 1, top)
        w = w / w.sum(-1, keepdim=True)
        inter = cfg.intermediate_size
        moe = torch.zeros_like(x)
        for e in range(cfg.num_experts):
            gu = h @ L.w13[e].to(f).T
            y = (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ L.w2[e].to(f).T
            moe += (w * (top == e)).sum(-1, keepdim=True) * y
        x = x + moe
    return norm(x[-1:], model.final_norm) @ model.lm_head.to(f).T


@pytest.fixture(scope="module")
def ample():
    return run_checked(PROMPTS, MAX_TOKENS)


@pytest.mark.host_only("the engine on the reference backend (float64 on the host): no kernel")
def test_ample_run_matches_the_dense_oracle(ample):
    tokens, eng = ample
    model = eng.runner.model
    oracle = [dense_greedy(model, list(p.encode()), m) for p, m in zip(PROMPTS, MAX_TOKENS)]
    assert tokens == oracle
    assert len({tuple(t) for t in tokens}) == len(tokens)  # six different continuations: not a constant model


REGIMES = {
    "chunked": dict(long_prefill_token_threshold=5, max_num_batched_tokens=16),
    "prefix": dict(enable_prefix_caching=True),
    "prefix+chunked": dict(enable_prefix_caching=True, long_prefill_token_threshold=3, max_num_batched_tokens=11),
    "two-seqs": dict(max_num_seqs=2, max_num_batched_tokens=20),
    "pressure": dict(num_blocks=16),  # 15 blocks = 60 tokens for ~180 tokens of work
    "pressure+prefix+chunked": dict(num_blocks=16, enable_prefix_caching=True, long_prefill_token_threshold=6),
}


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.host_only("the engine on the reference backend (float64 on the host): no kernel")
def test_scheduling_never_changes_tokens(ample, regime):
    tokens, eng = run_checked(PROMPTS, MAX_TOKENS, **REGIMES[regime])
    assert tokens == ample[0]
    s = eng.stats.summary()
    if "pressure" in regime:
        assert s["preemptions"] > 0  # the regime did what it is named for
    if "prefix" in regime:
        assert s["prefix_hit_tokens"] > 0
    if "chunked" in regime:
        assert any(0 < st.num_scheduled_tokens and st.num_decode_reqs < st.num_scheduled_reqs
                   for st in eng.stats.steps)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.meta_unsupported("the engine samples from logits between launches and calls kernels.triton itself (on default_device(), the device fixture's device)")
def test_a_read_of_poisoned_kv_is_caught(backend, device):
    """Guard for the guards: NaN in a V slot a request owns reaches the engine's finite checks.

    (A V slot: a NaN *key* becomes an output of 0, not NaN, in the reference and the Triton decode kernel.)
    """
    which = 1
    eng = LLMEngine(TINY, backend=backend, block_size=BS, num_blocks=32)
    eng.runner.debug = True
    rid = eng.add_request("poison me", SamplingParams(max_tokens=4, ignore_eos=True))
    eng.step()
    block = eng.scheduler.kv.block_ids(eng.scheduler.requests[rid])[0]
    eng.runner.kv_caches[1][which, block, 0] = float("nan")  # one K or V slot of layer 1
    with pytest.raises(FloatingPointError, match="layer 1: attention output is not finite"):
        eng.step()


@pytest.mark.host_only("the engine on the reference backend (float64 on the host): no kernel")
def test_prefix_cache_saves_exactly_the_shared_full_blocks():
    a, b = SHARED + "the lazy dog", SHARED + "a cat"
    eng = LLMEngine(TINY, backend="reference", block_size=BS, num_blocks=64, enable_prefix_caching=True)
    sp = SamplingParams(max_tokens=4, ignore_eos=True)
    out_a = eng.generate([a], sp)[0]
    assert out_a.num_cached_tokens == 0
    out_b = eng.generate([b], sp)[0]
    assert out_b.num_cached_tokens == 28  # 31 shared bytes = 7 full blocks of 4
    first_b = eng.stats.steps[len(eng.stats.steps) - 4]
    assert first_b.num_prefix_hit_tokens == 28 and first_b.num_scheduled_tokens == len(b) - 28
    # the same prompt again: a's 10 full blocks hit (its 43rd token is recomputed anyway)
    out_a2 = eng.generate([a], sp)[0]
    assert len(a) == 43 and out_a2.num_cached_tokens == 40
    # a prompt of exactly 8 full blocks whose blocks are all cached still recomputes its last block
    out_c = eng.generate([a[:32]], sp)[0]
    assert out_c.num_cached_tokens == 28
    plain = run_checked([a, b, a, a[:32]], [4] * 4)[0]
    assert [out_a.output_token_ids, out_b.output_token_ids, out_a2.output_token_ids, out_c.output_token_ids] == plain


@pytest.mark.host_only("the engine on the reference backend (float64 on the host): no kernel")
def test_identical_prompts_in_one_step_share_blocks_computed_in_that_step():
    p = "same prompt, same step"  # 22 bytes -> 5 full blocks
    tokens, eng = run_checked([p, p, p], [5, 5, 5], enable_prefix_caching=True)
    assert eng.stats.steps[0].num_prefix_hit_tokens == 2 * 20
    assert eng.stats.steps[0].num_scheduled_tokens == 22 + 2 * 2
    assert tokens[0] == tokens[1] == tokens[2] == run_checked([p], [5])[0][0]


@pytest.mark.parametrize("quant", ["int4", "fp8"])
@pytest.mark.host_only("the engine on the reference backend (float64 on the host): no kernel")
def test_quantized_model_tokens_do_not_depend_on_scheduling(quant):
    model = ModelConfig(weight_quant=quant)
    prompts, mts = PROMPTS[:4], [5, 5, 5, 5]
    base = run_checked(prompts, mts, model=model)[0]
    assert run_checked(prompts, mts, model=model, num_blocks=14, enable_prefix_caching=True,
                       long_prefill_token_threshold=5)[0] == base


# ---------------------------------------------------------------------------------------- Triton kernels

TRITON_PROMPTS = ["Hello, world", "Hello, there", "abc"]
TRITON_MAX = [4, 4, 4]


@pytest.fixture(scope="module")
def reference_short():
    return run_checked(TRITON_PROMPTS, TRITON_MAX)[0]


@pytest.mark.meta_unsupported("the engine samples from logits between launches and calls kernels.triton itself (on default_device(), the device fixture's device)")
def test_triton_backend_matches_reference(reference_short, device):
    with record_trace() as trace:
        tokens, eng = run_checked(TRITON_PROMPTS, TRITON_MAX, backend="triton")
    assert tokens == reference_short
    # the Triton launchers ran (their NVTX ranges), inside the engine's forward
    ranges = trace.totals_us()
    assert {"write_kv", "paged_prefill", "paged_decode", "route", "fused_moe", "forward"} <= set(ranges)


@pytest.mark.meta_unsupported("the engine samples from logits between launches and calls kernels.triton itself (on default_device(), the device fixture's device)")
def test_triton_backend_under_pressure_chunking_and_prefix_caching(reference_short, device):
    tokens, eng = run_checked(TRITON_PROMPTS, TRITON_MAX, backend="triton", num_blocks=7,
                              enable_prefix_caching=True, long_prefill_token_threshold=5)
    assert tokens == reference_short
    s = eng.stats.summary()
    assert s["preemptions"] > 0 and s["prefix_hit_tokens"] > 0


@pytest.mark.parametrize("quant", ["int4", "fp8"])
@pytest.mark.meta_unsupported("the engine samples from logits between launches and calls kernels.triton itself (on default_device(), the device fixture's device)")
def test_triton_quantized_experts_match_reference(quant, device):
    model = ModelConfig(weight_quant=quant)
    prompts, mts = ["Hello", "abc def"], [3, 3]
    ref = run_checked(prompts, mts, model=model)[0]
    assert run_checked(prompts, mts, backend="triton", model=model, long_prefill_token_threshold=3)[0] == ref
