"""The integrity rules catch every cheat of the corpus (``correctness/cheats/``), each by the defence it names,
and pass every right implementation (``kernels/testing/integrity.py``).

Each cheat is judged as ``servekernels check --impl`` judges it, on one cheap check case of its op plus the
op's drawn case (``python -m correctness.cheats`` runs every case); the timing-only cheat goes through the
measured path's loop on a recording device (a fake clock: the loop's rules, without a GPU). Honest
implementations (the float64 reference wrapper, this project's kernels) pass the same rules.
"""
from __future__ import annotations

import random
import sys

import pytest
import torch

from correctness.cheats.__main__ import caught_by, names
from kernels.impls import load
from kernels.ops import get
from kernels.testing import integrity
from kernels.testing.integrity import DEFENCES, Breach, JudgeSnapshot
from perf import harness
from servekernels.check import collect, run_case, spec_case

pytestmark = pytest.mark.host_only("the cheats and the reference wrapper are float64 references on the host; check "
                                   "cases build on default_device() themselves")

C = "correctness.cheats."
CASE = {  # cheat -> the cheap check case it is judged on (the drawn case of its op runs too)
    "aliased_output": "qwen2.5-7b/decode-ragged", "frame_reference": "qwen2.5-7b/decode-ragged",
    "front_sequences": "qwen2.5-7b/decode-ragged", "strided_view": "qwen2.5-7b/decode-ragged",
    "writes_inputs": "qwen2.5-7b/decode-ragged", "patched_timer": "qwen2.5-7b/decode-ragged",
    "file_reference": "gemma2-like/prefill-window64-cap50",
    "fingerprint_cache": "mixtral-8x7b-like/moe-decode", "shape_cache": "mixtral-8x7b-like/moe-decode",
    "workspace_output": "mixtral-8x7b-like/moe-decode",
    "first_calls_right": "qwen2.5-7b/merge-s5-fp16", "gc_reference": "qwen2.5-7b/merge-s5-fp16",
    "wrong_dtype": "qwen2.5-7b/merge-s5-fp16", "patched_judge": "qwen2.5-7b/merge-s5-fp16",
    "lazy_subclass": "llama-like/grouped-gemm-int4-g32-zp-k-tail",
    "nan_fill": "deepseek-v3-like/grouped-gemm-fp8-block", "ptr_cache": "mixtral-8x7b-like/grouped-gemm-bf16",
}
TIMING_ONLY = [n for n in names() if n not in CASE]


def test_the_corpus_covers_every_class():
    assert len(names()) >= 12
    assert sorted(CASE) + TIMING_ONLY == sorted(CASE) + ["warm_then_wrong"], "a new cheat needs its case here"
    for n in names():
        assert set(caught_by(n)) <= set(DEFENCES), n


def _first_failure(name: str, seed: int = 12345):
    sys.modules.pop(C + name, None)  # imported afresh, as in its own check run (its import-time patches, its state)
    snapshot = JudgeSnapshot()  # before the cheat is imported
    for case in collect([CASE[name]], exact=True, impls=[C + name], seed=seed, snapshot=snapshot):
        for r in run_case(case, snapshot):
            if not r.ok:
                return r
    return None


@pytest.mark.parametrize("name", sorted(CASE))
def test_check_catches_the_cheat_by_its_defence(name):
    row = _first_failure(name)
    assert row is not None, f"{name} passed servekernels check"
    assert (row.defence or "values") in caught_by(name), (row.defence, row.detail)


def test_a_patched_judge_is_put_back():
    real = torch.allclose
    row = _first_failure("patched_judge")
    assert row.defence == "judge untouched" and torch.allclose is real
    import kernels.testing.judge

    assert kernels.testing.judge.compare.__code__.co_filename.endswith("judge.py")


def _drawn(op: str, seed: int = 3) -> dict:
    spec = get(op)
    return spec.draw(random.Random(f"{seed}/{op}"))


def test_the_measured_path_catches_a_kernel_right_only_on_its_first_calls():
    cheat = load(C + "warm_then_wrong")
    with pytest.raises(Breach) as caught:
        harness.guarded_measure(get("paged_decode"), cheat.op("paged_decode"), _drawn("paged_decode"), 0,
                                harness.TimingPolicy(warmup=3, reps=20), device=harness.RecordingDevice())
    assert caught.value.defence in caught_by("warm_then_wrong")


def test_the_loop_alternates_fresh_sets_and_judges_an_iteration_drawn_from_urandom(monkeypatch):
    """A call wrong only at one iteration inside the loop is caught there: the re-checked iteration comes from
    ``os.urandom`` (patched here to pick 5), not from any seed; every call is bracketed, the flush outside."""
    device = harness.RecordingDevice()
    calls = {"n": 0}

    def call(j):
        def run():
            calls["n"] += 1
            return torch.full((4,), -1.0 if calls["n"] == 3 + 5 + 1 else float(j))  # wrong at timed call 5 only
        return run

    def check(j):
        def judge(out):
            assert bool((out == j).all()), f"set {j}: got {out.tolist()}"
        return judge

    monkeypatch.setattr(harness.os, "urandom", lambda n: (5).to_bytes(n, "little"))
    with pytest.raises(Breach) as caught:
        harness.timed_loop([call(0), call(1)], harness.TimingPolicy(warmup=3, reps=10), device,
                           [check(0), check(1)])
    assert caught.value.defence == "re-check inside the timed loop" and "timed call 5 of 10" in str(caught.value)
    timed = [e for e in device.log if e.startswith(("flush", "call", "keep"))]
    assert timed[:4] == ["flush 0", "call 0 set 0", "flush 1", "call 1 set 1"]
    assert timed[timed.index("call 5 set 1") + 1] == "keep"


def test_an_honest_implementation_passes_the_measured_path():
    samples = harness.guarded_measure(get("paged_decode"), load("correctness.wrong_impls.reference_wrapper").op(
        "paged_decode"), _drawn("paged_decode"), 0, harness.TimingPolicy(warmup=1, reps=4),
        device=harness.RecordingDevice(step_ms=0.5))
    assert samples == [0.5] * 4


@pytest.mark.parametrize("impl, case", [("correctness.wrong_impls.reference_wrapper", "gemma2-like/decode-window64-cap50"),
                                        ("correctness.cheats._honest", "qwen2.5-7b/merge-s5-fp16"),
                                        ("reference", "qwen2.5-7b/merge-s5-fp16")])
def test_right_implementations_pass_every_rule(impl, case):
    snapshot = JudgeSnapshot()
    rows = [r for c in collect([case], exact=True, impls=[impl], seed=integrity.draw_seed(), snapshot=snapshot)
            for r in run_case(c, snapshot)]
    judged = [r for r in rows if not r.status]
    assert judged and all(r.ok for r in judged), [(r.case, r.op, r.detail[:300]) for r in judged if not r.ok]
    assert any(r.case.endswith("fresh values") for r in judged)


@pytest.mark.interpreter("our Triton merge kernel on the drawn shape and its fresh values, under the guard")
def test_our_kernels_pass_every_rule():
    spec = get("merge_states")
    rows = run_case(spec_case(spec, "merge_states/drawn", _drawn("merge_states"), load("servekernels"), 0, fresh=True))
    assert len(rows) == 4 and all(r.ok and not r.status for r in rows), [(r.op, r.detail[:300]) for r in rows]


def test_the_parity_suites_T_refuses_a_call_that_writes_its_inputs():
    from correctness import impl
    from kernels.testing.paged import make_paged_batch

    b = make_paged_batch([600, 3], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype="float32")
    impl.set_current(load(C + "writes_inputs"))
    try:
        with pytest.raises(Breach, match="seq_lens"):
            impl.T.paged_decode(*b.decode_args())
        impl.set_current(load(C + "lazy_subclass"))
    finally:
        impl.set_current(None)


def test_fresh_values_keep_storage_shape_and_edges_and_change_the_interior():
    spec = get("grouped_gemm")
    inputs = spec.build(_drawn("grouped_gemm"), "cpu", seed=1)
    a = inputs.args[0]
    before, ptr = a.clone(), a.data_ptr()
    integrity.fresh_values(inputs)
    flat, old = a.view(-1), before.view(-1)
    edge = a.numel() // 8
    assert a.data_ptr() == ptr and torch.equal(flat[:edge], old[:edge]) and torch.equal(flat[-edge:], old[-edge:])
    assert torch.equal(flat[edge:-edge], -old[edge:-edge])


def test_the_run_seed_is_fixed_for_built_in_providers_and_fresh_for_a_users():
    assert integrity.run_seed(None, ["servekernels", "vllm"]) == integrity.FIXED_SEED
    assert integrity.run_seed(7, [C + "nan_fill"]) == 7
    assert len({integrity.run_seed(None, [C + "nan_fill"]) for _ in range(4)}) > 1


def test_check_prints_the_seed_and_how_to_replay_a_failure(capsys):
    from servekernels.cli import main

    rc = main(["check", "--impl", C + "nan_fill", "-k", "deepseek-v3-like/grouped-gemm-fp8-block", "--exact",
               "--seed", "7"])
    out = capsys.readouterr().out
    assert rc == 1 and "seed 7" in out.splitlines()[0]
    assert f"replay: servekernels check --seed 7 --impl {C}nan_fill -k deepseek-v3-like/grouped-gemm-fp8-block" in out


def test_an_isolated_implementation_cannot_patch_the_judge():
    real = torch.allclose
    rows = [r for c in collect(["qwen2.5-7b/merge-s5-fp16"], exact=True, impls=[C + "patched_judge"], isolate=True,
                               snapshot=JudgeSnapshot(), drawn=False) for r in run_case(c)]
    assert torch.allclose is real
    assert any(r.op == "out" and not r.ok for r in rows), [(r.op, r.defence) for r in rows]


def test_a_time_below_the_memory_floor_is_impossible_not_a_record(monkeypatch):
    from roofline import report
    from roofline.catalogue import catalogue
    from roofline.specs import get_spec

    spec = get_spec("h100-sxm")
    case = next(c for c in catalogue() if c.op == "paged_decode" and c.quick)
    row = report.model_row(case, spec)
    floor = row["t_memory_us"]
    monkeypatch.setattr(report, "measure_case", lambda *a, **k: {"t_measured_us": floor / 3, "parity_full": "pass",
                                                                  "max_rel_err_full": 0.0, "host_launch_us": 1.0})
    row["parity"], row["max_rel_err"] = "pass", 0.0

    class Progress:
        def step(self, what):
            pass

    report._fill_row(row, case, None, True, None, Progress(), spec, load("reference"))
    assert row["status"].startswith(report.IMPOSSIBLE) and row["t_measured_us"] is None
    assert row["impossible_us"] == pytest.approx(floor / 3) and row["pct_of_roof"] is None
    assert report.impossible_speed({"t_measured_us": floor * 1.01, "t_memory_us": floor}) is None
