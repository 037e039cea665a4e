"""The engine end to end on the reference backend: one request's lifecycle, stop conditions and their order,
sampling (greedy ties, seeded temperature sampling independent of the batch), input checks, stats, CLI, trace."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine import LLMEngine, ModelConfig, SamplingParams
from engine.request import Request
from engine.sampler import sample

pytestmark = pytest.mark.host_only("the engine on the reference backend (float64 on the host): no kernel")

TINY = ModelConfig()  # hidden 64, 2 layers, 4 q / 2 kv heads, head_dim 32, 4 experts top-2


def make_engine(model=TINY, **kw) -> LLMEngine:
    kw.setdefault("block_size", 4)
    kw.setdefault("num_blocks", 64)
    return LLMEngine(model, backend="reference", **kw)


def greedy(prompt, max_tokens, model=TINY, **kw) -> list[int]:
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, **kw)
    return make_engine(model).generate([prompt], sp)[0].output_token_ids


def test_lifecycle_of_one_request():
    eng = make_engine()
    rid = eng.add_request("seven!!", SamplingParams(max_tokens=5, ignore_eos=True))
    trace, outputs = [], []
    while eng.has_unfinished_requests():
        req = eng.scheduler.requests[rid]
        before = req.num_tokens
        outputs += eng.step()
        s = eng.stats.steps[-1]
        trace.append((s.num_scheduled_tokens, req.num_tokens - before))
    # step 1: the whole prompt and the first token; then one token per decode step; finish at the cap
    assert trace == [(7, 1), (1, 1), (1, 1), (1, 1), (1, 1)]
    assert len(eng.stats.steps) == 5  # steps = max_tokens when the prompt fits one step
    (out,) = outputs
    assert out.finish_reason == "length" and len(out.output_token_ids) == 5
    assert out.prompt_token_ids == list(b"seven!!") and out.text == eng.tokenizer.decode(out.output_token_ids)
    times = eng.stats.requests[rid]
    assert times.ttft_steps == 1 and times.itl_steps == [1, 1, 1, 1]
    assert times.ttft_s > 0 and all(x > 0 for x in times.itl_s)
    assert eng.scheduler.kv.pool.num_free_blocks == eng.scheduler.kv.num_usable_blocks


def test_context_changes_the_continuation():
    """Non-vacuity: attention matters (same last token, different prefix -> different tokens), and tokens vary."""
    a = greedy("abcdefgh xyz", 8)
    b = greedy("zyxwvuts xyz", 8)
    assert a != b
    assert len(set(a)) >= 3


def test_stop_token_ids_and_eos_and_their_order():
    ref = greedy("stop here", 10)
    t = ref[3]
    first = ref.index(t)
    # a stop token id: stop at its first occurrence, the token kept
    out = make_engine().generate(["stop here"], SamplingParams(max_tokens=10, stop_token_ids=(t,)))[0]
    assert out.finish_reason == "stop" and out.output_token_ids == ref[: first + 1]
    # the same token as EOS (same weights: the seed did not change)
    eos_model = ModelConfig(eos_token_id=t)
    out = make_engine(eos_model).generate(["stop here"], SamplingParams(max_tokens=10))[0]
    assert out.finish_reason == "stop" and out.output_token_ids == ref[: first + 1]
    out = make_engine(eos_model).generate(["stop here"], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    assert out.finish_reason == "length" and out.output_token_ids == ref
    # order: the length check runs first, so EOS as the max_tokens-th token finishes "length"
    out = make_engine(eos_model).generate(["stop here"], SamplingParams(max_tokens=first + 1))[0]
    assert out.finish_reason == "length" and out.output_token_ids == ref[: first + 1]


def test_max_model_len_caps_the_request():
    model = ModelConfig(max_model_len=12)
    out = make_engine(model).generate(["0123456789"], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.output_token_ids) == 2


def test_greedy_ties_go_to_the_lowest_id_and_nan_logits_raise():
    req = Request("r", [1], SamplingParams())
    assert sample(np.array([[1.0, 5.0, 5.0, 2.0]]), [req]) == [1]
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        sample(np.array([[1.0, np.nan, 0.0]]), [req])


def test_temperature_sampling_follows_the_softmax():
    logits = np.array([[0.0, np.log(2.0), np.log(5.0), -50.0]])  # probabilities 1/8, 2/8, 5/8, ~0
    req = Request("r", [1], SamplingParams(temperature=1.0), generator=np.random.default_rng(7))
    n = 4000
    counts = np.bincount([sample(logits, [req])[0] for _ in range(n)], minlength=4)
    p = np.array([1, 2, 5, 0]) / 8
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) <= 5 * sigma + 1), counts  # 5 binomial sigmas: fails ~1e-6 by chance
    # temperature 0.25 sharpens: probabilities ~ p**4 -> token 2 takes 390/407 of the mass
    req = Request("r", [1], SamplingParams(temperature=0.25), generator=np.random.default_rng(8))
    counts = np.bincount([sample(logits, [req])[0] for _ in range(n)], minlength=4)
    assert counts[2] > 0.93 * n and counts[3] == 0


def test_seeded_sampling_does_not_depend_on_the_batch():
    sp = SamplingParams(max_tokens=8, temperature=0.8, seed=1234, ignore_eos=True)
    alone = make_engine().generate(["sampling"], sp)[0].output_token_ids
    others = [SamplingParams(max_tokens=6, temperature=1.0, seed=s, ignore_eos=True) for s in (1, 2)]
    batch = make_engine(long_prefill_token_threshold=3).generate(["abc", "sampling", "defghij"],
                                                                 [others[0], sp, others[1]])
    assert batch[1].output_token_ids == alone
    other_seed = make_engine().generate(["sampling"], SamplingParams(max_tokens=8, temperature=0.8, seed=99,
                                                                     ignore_eos=True))[0].output_token_ids
    assert other_seed != alone
    assert alone != greedy("sampling", 8)  # the sampling path was really taken


@pytest.mark.parametrize("make, match", [
    (lambda: ModelConfig(num_q_heads=3, num_kv_heads=2), "num_q_heads"),
    (lambda: ModelConfig(head_dim=20), "head_dim"),
    (lambda: ModelConfig(weight_quant="int8"), "weight_quant"),
    (lambda: ModelConfig(dtype="bfloat16"), "dtype"),
    (lambda: SamplingParams(max_tokens=0), "max_tokens"),
    (lambda: SamplingParams(temperature=-1.0), "temperature"),
    (lambda: SamplingParams(stop_token_ids=(-1,)), "stop_token_ids"),
    (lambda: LLMEngine(TINY, backend="cuda"), "backend"),
    (lambda: LLMEngine(TINY, backend="reference", num_blocks=1), "num_blocks"),
    (lambda: LLMEngine(TINY, backend="reference", max_num_batched_tokens=0), "max_num_batched_tokens"),
    (lambda: make_engine().add_request(""), "prompt"),
    (lambda: make_engine().add_request([5, 300]), "prompt"),
    (lambda: make_engine().add_request("x" * 2000), "prompt"),
])
def test_bad_input_raises_value_error_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_abort_through_the_engine():
    eng = make_engine()
    a = eng.add_request("first", SamplingParams(max_tokens=20, ignore_eos=True))
    b = eng.add_request("second", SamplingParams(max_tokens=3, ignore_eos=True))
    eng.step()
    assert eng.abort_request(a)
    done = {}
    while eng.has_unfinished_requests():
        done.update({o.request_id: o for o in eng.step()})
    assert done[a].finish_reason == "abort" and len(done[a].output_token_ids) == 1
    assert done[b].finish_reason == "length"
    assert eng.scheduler.kv.pool.num_free_blocks == eng.scheduler.kv.num_usable_blocks


def test_prompt_that_can_never_fit_is_aborted_with_a_reason():
    eng = make_engine(num_blocks=5)  # 4 blocks of 4 tokens
    outs = eng.generate(["this prompt is too long", "ok"], SamplingParams(max_tokens=2, ignore_eos=True))
    assert outs[0].finish_reason == "abort" and "KV blocks" in outs[0].abort_reason
    assert outs[1].finish_reason == "length"


def test_cli_prints_text_steps_summary_and_writes_a_trace(tmp_path, capsys):
    from servekernels.cli import main

    trace = tmp_path / "trace.json"
    rc = main(["generate", "Hello", "Hello there", "--max-tokens", "3", "--backend", "reference",
               "--block-size", "4", "--trace", str(trace)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "text:" in out and "step  run wait" in out and "TTFT" in out and "inter-token" in out
    assert "4 prompt tokens from the prefix cache" in out  # "Hell" is a full block shared in the same step
    names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"]}
    assert {"step", "schedule", "prepare", "forward", "attention", "moe", "sample", "update"} <= names


def test_float16_and_quantized_models_run():
    for model in (ModelConfig(dtype="float16"), ModelConfig(weight_quant="int4"), ModelConfig(weight_quant="fp8")):
        out = make_engine(model).generate(["quantized"], SamplingParams(max_tokens=4, ignore_eos=True))[0]
        assert out.finish_reason == "length" and len(out.output_token_ids) == 4


def test_request_that_outgrows_the_cache_is_aborted_after_preempting_itself():
    eng = make_engine(block_size=1, num_blocks=4)  # 3 one-token blocks
    out = eng.generate(["ab"], SamplingParams(max_tokens=5, ignore_eos=True))[0]
    assert out.finish_reason == "abort" and "KV blocks" in out.abort_reason
    assert len(out.output_token_ids) == 2 and out.num_preemptions == 1  # 3 tokens computed + 1 sampled
    assert sum(s.num_preempted for s in eng.stats.steps) == 1
