"""FlashInfer-Trace sampling families (``servekernels/trace/families/sampling.py``): flashinfer-bench's
``*_sampling_from_probs_v{V}`` and FlashInfer's sampling templates map to ``top_k_top_p_sample`` and are judged by
the statistical oracle (a Solution owns its RNG): the Definition's reference as a Solution passes on a foreign
workload and on our check cases, a sampler ignoring top_k, top-p off by one token either way, a greedy argmax and a
wrong dtype fail with the status that fits and a log naming the row and token; a Solution with flashinfer-bench's
tie rule (exactly k, ties cut arbitrarily) passes our tie-planted cases; exported files validate with
``flashinfer_bench.data``; FlashInfer's template references agree with our kept sets on their own inputs.
FlashInfer's ``chain_speculative_sampling`` maps to ``rejection_sample``: the law of (first rejection, token)
judges it; its deterministic template reference is no draw of that law."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.host_only("FlashInfer-Trace files, torch samplers on the host: no Triton kernel")

V = 128


def _rows():
    """Four rows of a geometric head (ratio 0.75, 24 tokens, ids shuffled) over a flat tail of 1e-4 weights:
    top_k 5; top_p 0.7 (the mass before the 5th token is 0.68, before the 6th 0.76: no boundary near p); top_k 8
    then top_p 0.8 of the top-8 mass (0.754 / 0.841 around p; without top-k, 0.76 keeps a 6th token); top_p 0
    (the argmax). Every dropped or kept boundary token holds >= 5% of the mass."""
    import torch

    rng = np.random.default_rng(3)
    w = np.concatenate([0.75 ** np.arange(24), np.full(V - 24, 1e-4)])
    probs = np.stack([w[rng.permutation(V)] for _ in range(4)])
    probs /= probs.sum(axis=1, keepdims=True)
    return {"probs": torch.tensor(probs, dtype=torch.float32),
            "top_k": torch.tensor([5, 0, 8, 0], dtype=torch.int32),
            "top_p": torch.tensor([1.0, 0.7, 0.8, 0.0], dtype=torch.float32)}


def _solution(d, name, source):
    from servekernels.trace.schema import Solution, SourceFile

    return Solution(name, d.name, "t", "python", ["cpu"], "main.py::run", [SourceFile("main.py", source)],
                    destination_passing_style=False)


def _wrong(ref: str, old: str, new: str) -> str:
    assert old in ref, old
    return ref.replace(old, new)


_LAST = "last = vals[int((before < p * vals.sum()).sum()) - 1]"
WRONG = {  # name: (edit of the reference, the status, what the log must name)
    "ignores_top_k": (("if 0 < k < vocab:", "if False:"), "INCORRECT_NUMERICAL", "outside the kept set"),
    "top_p_one_short": ((_LAST, _LAST.replace("- 1]", "- 2]")), "INCORRECT_NUMERICAL", "drawn 0 times"),
    "top_p_one_more": ((_LAST, _LAST.replace("- 1]", "- 0]")), "INCORRECT_NUMERICAL", "outside the kept set"),
    "greedy": (("samples[i] = torch.multinomial(row, 1).squeeze(0)", "samples[i] = int(torch.argmax(row))"),
               "INCORRECT_NUMERICAL", "expected"),
    "int32_out": (("return samples.to(torch.int64)", "return samples.to(torch.int32)"), "INCORRECT_DTYPE",
                  "dtype"),
}


def _judge(tmp_path, d, named, sources: dict, axes: dict | None = None) -> dict:
    """``d`` with one foreign workload (``named`` in a safetensors blob, a fresh uuid) and ``sources`` as python
    Solutions, judged in this process: ``{(solution, "ours"/"theirs"): Evaluation}``."""
    from safetensors.torch import save_file

    from servekernels.trace.judge import load_dataset, run_task, tasks_for
    from servekernels.trace.schema import InputSpec, Workload

    (tmp_path / "definitions" / "sampling").mkdir(parents=True)
    (tmp_path / "definitions" / "sampling" / f"{d.name}.json").write_text(json.dumps(d.to_json()))
    blob = f"blob/workloads/{d.name}.safetensors"
    (tmp_path / "blob" / "workloads").mkdir(parents=True)
    save_file({n: v.contiguous() for n, v in named.items()}, str(tmp_path / blob))
    specs = {n: InputSpec("safetensors", path=f"./{blob}", tensor_key=n) for n in named}
    (tmp_path / "workloads" / "sampling").mkdir(parents=True)
    (tmp_path / "workloads" / "sampling" / f"{d.name}.jsonl").write_text(json.dumps(
        {"definition": d.name, "workload": Workload(axes or {"batch_size": int(named["probs"].shape[0])}, specs,
                                                    "foreign-sampling").to_json()}) + "\n")
    (tmp_path / "solutions").mkdir()
    for name, src in sources.items():
        sol = src if not isinstance(src, str) else _solution(d, name, src)  # a Solution, or a python source
        (tmp_path / "solutions" / f"{name}.json").write_text(json.dumps(sol.to_json()))
    ds = load_dataset(tmp_path)
    tasks, notes = tasks_for(ds, log=lambda *_: None)
    assert tasks, notes
    return {(t.solution, "ours" if t.ours else "theirs"): run_task(tmp_path, ds, t).evaluation for t in tasks}


def test_published_names_map_to_the_sampler():
    """Each flashinfer-bench form and FlashInfer template name finds its family (probs or logits), the others
    do not; coverage counts the nine families."""
    from servekernels.trace.families import (SamplingFromLogits, SamplingFromProbs, family_for_definition,
                                             judged_families)

    fam = SamplingFromProbs()
    for kind in ("top_k", "top_p", "top_k_top_p"):
        d = fam.form(V, kind)
        got, why = family_for_definition(d)
        assert isinstance(got, SamplingFromProbs) and got.op == "top_k_top_p_sample", why
        assert d.name == f"{kind}_sampling_from_probs_v{V}"
        assert list(d.inputs) == {"top_k": ["probs", "top_k"], "top_p": ["probs", "top_p"],
                                  "top_k_top_p": ["probs", "top_k", "top_p"]}[kind]
    for name, cls in (("top_k_sampling_v128256", SamplingFromProbs), ("sampling_from_probs_v32000", SamplingFromProbs),
                      ("top_k_top_p_sampling_from_logits_v32000", SamplingFromLogits),
                      ("sampling_from_logits_v32000", SamplingFromLogits)):
        assert isinstance(next(f for f in [SamplingFromProbs(), SamplingFromLogits()] if f._match(name)), cls)
    assert not SamplingFromProbs()._match("top_k_top_p_sampling_from_logits_v32000")
    assert not SamplingFromProbs()._match("min_p_sampling_v32000")
    judged = judged_families()
    for p in ("top_k_sampling_from_probs", "top_p_sampling_from_probs", "top_k_top_p_sampling_from_probs",
              "top_k_sampling", "top_p_sampling", "top_k_top_p_sampling", "sampling_from_probs",
              "sampling_from_logits", "top_k_top_p_sampling_from_logits"):
        assert judged[p] == "top_k_top_p_sample", p


def test_inputs_map_with_their_meaning():
    """probs -> log-probs (0 -> -inf) at temperature 1; top_p <= 0 -> a greedy row; top_p >= 1 and top_k
    outside (0, V) -> off; a row that is no distribution is a ValueError naming probs; and back: our call's
    named inputs hold softmax(logits / T) and a greedy row as top_p 0."""
    import torch

    from kernels.reference.sampling import kept_probabilities
    from servekernels.trace.families import SamplingFromProbs

    fam = SamplingFromProbs()
    d = fam.form(4, "top_k_top_p")
    named = {"probs": torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]]),
             "top_k": torch.tensor([9, -3], dtype=torch.int32), "top_p": torch.tensor([1.5, -1.0])}
    inputs = fam.inputs_from(d, named)
    assert inputs.args[0][0, 3] == -float("inf")
    assert inputs.kwargs["temperature"].tolist() == [1.0, 0.0] and inputs.kwargs["top_k"].tolist() == [0, 0]
    assert inputs.kwargs["top_p"].tolist() == [1.0, 1.0]
    q = kept_probabilities(inputs.args[0], **inputs.kwargs)
    np.testing.assert_allclose(q, [[0.5, 0.25, 0.25, 0.0], [0, 0, 0, 1.0]], atol=1e-7)
    back = fam.named(d, inputs)
    np.testing.assert_allclose(back["probs"][0].numpy(), [0.5, 0.25, 0.25, 0.0], atol=1e-7)
    assert back["top_p"].tolist() == [1.0, 0.0] and back["top_k"].dtype == torch.int32
    for bad in ([[0.5, -0.1, 0.6, 0.0]], [[0.0, 0.0, 0.0, 0.0]], [[float("nan"), 0.5, 0.5, 0.0]]):
        with pytest.raises(ValueError, match="^probs: row 0"):
            fam.inputs_from(d, {"probs": torch.tensor(bad), "top_k": torch.tensor([0]), "top_p": torch.tensor([1.0])})


@pytest.mark.parametrize("name", ["reference", *WRONG])
def test_solutions_on_a_foreign_workload(tmp_path, name):
    """top_k_top_p_sampling_from_probs_v128 on a workload read back from its blob: the Definition's reference as
    a Solution passes; each wrong one fails with its status, the log naming the row (and token)."""
    from servekernels.trace.families import SamplingFromProbs

    d = SamplingFromProbs().form(V, "top_k_top_p")
    src = d.reference if name == "reference" else _wrong(d.reference, *WRONG[name][0])
    ev = _judge(tmp_path, d, _rows(), {name: src})[(name, "theirs")]
    if name == "reference":
        assert ev.status == "PASSED", ev.log
        extra = ev.correctness["extra"]["servekernels"]
        assert extra["samples_per_row"] == 2000 and extra["fit_rows"] == 4 and extra["outside_kept_set"] == 0
        return
    _, status, what = WRONG[name]
    assert ev.status == status, ev.log
    assert what in ev.log and (status == "INCORRECT_DTYPE" or "row " in ev.log), ev.log


def test_flashinfer_bench_mask_disagrees_with_their_reference():
    """The finding, on the smallest row: probs [0.5, 0.4, 0.1] at top_p 0.6 -- their reference keeps tokens 0
    and 1 (the mass before token 1, 0.5, does not exceed 0.6), so do we; their evaluator's mask (cumulative
    mass <= p + 0.05) keeps token 0 only, so it fails a right sampler. And it admits tokens their reference
    drops: [0.3, 0.21, 0.01 x 49] at 0.5 keeps 0 and 1, the mask 0 to 5."""
    import torch

    from servekernels.trace.families.sampling import fib_mask, oracle_sets

    probs = np.array([[0.5, 0.4, 0.1]])
    _, sure, maybe = oracle_sets(torch.log(torch.tensor(probs)).float(), temperature=1.0, top_k=0, top_p=0.6)
    assert sure[0].tolist() == maybe[0].tolist() == [True, True, False]
    assert fib_mask(probs, np.array([0]), np.array([0.6])).tolist() == [[True, False, False]]
    wide = np.concatenate([[0.3, 0.21], np.full(49, 0.01)])[None]
    _, sure, _ = oracle_sets(torch.log(torch.tensor(wide)).float(), temperature=1.0, top_k=0, top_p=0.5)
    assert np.flatnonzero(sure[0]).tolist() == [0, 1]
    assert np.flatnonzero(fib_mask(wide, np.array([0]), np.array([0.5]))[0]).tolist() == [0, 1, 2, 3, 4, 5]


_EXACTLY_K = '''import torch


@torch.no_grad()
def run(probs, top_k, top_p):
    # flashinfer-bench's rule: exactly k tokens by a descending sort (a tie at the k-th cut by position), then
    # the sorted prefix up to the first token whose cumulative mass exceeds p of the renormalised top-k mass
    probs = probs.to(torch.float32)
    batch, vocab = probs.shape
    out = torch.empty(batch, dtype=torch.int64)
    for i in range(batch):
        row = probs[i]
        k, p = int(top_k[i]), float(top_p[i])
        if 0 < k < vocab:
            keep = torch.argsort(row, descending=True, stable=True)[:k]
            row = torch.zeros_like(row).index_copy_(0, keep, row[keep])
            row = row / row.sum()
        if p <= 0.0:
            out[i] = int(torch.argmax(row))
            continue
        if p < 1.0:
            vals, idx = torch.sort(row, descending=True, stable=True)
            cdf = torch.cumsum(vals, 0)
            drop = torch.zeros_like(cdf, dtype=torch.bool)
            drop[1:] = cdf[:-1] > p
            row = torch.zeros_like(row).index_copy_(0, idx[~drop], vals[~drop])
        out[i] = torch.multinomial(row, 1).squeeze(0)
    return out
'''


@pytest.mark.slow
def test_our_check_cases_judge_both_tie_rules(tmp_path):
    """Our check cases (boundary ties planted on even rows, per-row parameters) as their workloads of
    top_k_top_p_sampling_from_probs_v{V}: the reference (ties kept), flashinfer-bench's own rule (exactly k,
    written here) and our torch sampler wrapped as a Solution pass (a tie-straddling row: support only); the
    one-short top-p fails."""
    from kernels.ops import registry
    from servekernels.trace.families import SamplingFromProbs
    from servekernels.trace.families.sampling import oracle_sets
    from servekernels.trace.judge import load_dataset, run_task, tasks_for
    from servekernels.trace.wrap import solution_for

    spec = registry()["top_k_top_p_sample"]
    case = "qwen2.5-vocab/sample-k20-p0.8-fp32"
    inputs = spec.build(spec.check[case], "cpu", 0)
    fam = SamplingFromProbs()
    d = fam.definition_for(spec, case, inputs, None)
    assert d.name == "top_k_top_p_sampling_from_probs_v3001"
    _, sure, maybe = oracle_sets(inputs.args[0], **{k: v for k, v in inputs.kwargs.items() if k != "noise"})
    straddle = (sure != maybe).any(1)  # a planted tie their rule may cut (row 4): support only there
    assert straddle.any() and not straddle.all()
    (tmp_path / "definitions" / "sampling").mkdir(parents=True)
    (tmp_path / "definitions" / "sampling" / f"{d.name}.json").write_text(json.dumps(d.to_json()))
    (tmp_path / "solutions").mkdir()
    sols = [_solution(d, "reference", d.reference), _solution(d, "exactly_k", _EXACTLY_K),
            _solution(d, "top_p_one_short", _wrong(d.reference, *WRONG["top_p_one_short"][0])),
            solution_for(d, "kernels.torch_eager", name="torch_eager")]
    for s in sols:
        (tmp_path / "solutions" / f"{s.name}.json").write_text(json.dumps(s.to_json()))
    ds = load_dataset(tmp_path)
    tasks, notes = tasks_for(ds, log=lambda *_: None, seed=5)
    assert {t.solution for t in tasks} == {s.name for s in sols}, notes
    got = {(t.solution, t.drawn is not None): run_task(tmp_path, ds, t).evaluation for t in tasks}
    assert len(got) == 8  # each on our check case and on the drawn shape fitted to the Definition
    for (sol, drawn), ev in got.items():
        want = "INCORRECT_NUMERICAL" if sol == "top_p_one_short" else "PASSED"
        assert ev.status == want, (sol, drawn, ev.log)
    assert "drawn shape" in got[("top_p_one_short", True)].log


def test_exported_sampling_files_validate_with_flashinfer_bench(tmp_path):
    """The export writes our check cases as flashinfer-bench's top_k_top_p_sampling_from_probs_v{V} and
    FlashInfer's top_k_top_p_sampling_from_logits_v{V} (the per-row mixed case has an all -inf row: no
    distribution, not exported in their form); flashinfer-bench's pydantic models accept every file."""
    data = pytest.importorskip("flashinfer_bench.data", reason="optional leg: flashinfer-bench is not installed")
    from servekernels.trace.export import export

    export(tmp_path, ops=["top_k_top_p_sample"], log=lambda *_: None)
    names = {p.stem for p in (tmp_path / "definitions" / "sampling").glob("*.json")}
    assert names == {"top_k_top_p_sampling_from_probs_v3001", "top_k_top_p_sampling_from_probs_v1500",
                     "top_k_top_p_sampling_from_logits_v3001", "top_k_top_p_sampling_from_logits_v1500"}, names
    n = 0
    for p in tmp_path.rglob("*.json"):
        data.Definition.model_validate_json(p.read_text())
        n += 1
    for p in tmp_path.rglob("*.jsonl"):
        for line in p.read_text().splitlines():
            data.Trace.model_validate_json(line)
            n += 1
    assert n >= 10


def _sampling_templates():
    from servekernels.trace.families import ADAPTERS

    return [pytest.param(f, t, id=f"{f.name}-{t.attr}") for f in ADAPTERS if f.draws for t in f.templates]


@pytest.mark.slow
@pytest.mark.parametrize("fam, template", _sampling_templates())
def test_flashinfer_template_reference_agrees_statistically(fam, template):
    """The second oracle for the sampling templates, on each template's own ``init`` inputs (vocab 256): a
    template whose reference samples (top_k / top_p / top_k_top_p) is drawn 2000 times a row and passes our
    oracle (support and goodness of fit, through the family's mapping); a template whose reference is an argmax
    stand-in (sampling_from_probs / _from_logits, top_k_top_p_sampling_from_logits: "deterministic") returns the
    mode of our distribution, inside our kept set -- which a sampler would not (a finding, not a pass of a
    sampler). The template's fi_trace dump loads and finds this family."""
    import importlib
    import inspect

    import torch

    pytest.importorskip("flashinfer.trace.templates", reason="optional leg: FlashInfer's trace templates absent")
    from kernels.testing.sampling_stats import judge_samples
    from servekernels.trace.families import family_for_definition
    from servekernels.trace.families.sampling import oracle_sets
    from servekernels.trace.schema import Definition

    tpl = getattr(importlib.import_module(f"flashinfer.trace.templates.{template.module}"), template.attr)
    init = tpl.init(device="cpu", **template.sizes)
    dump = Definition.from_json(tpl.build_fi_trace_fn(f"flashinfer.{tpl.name_prefix}")(**init), "fi_trace dump")
    found, why = family_for_definition(dump)
    assert found is not None and found.name == fam.name, (dump.name, why)
    stub = type("D", (), {"inputs": init, "name": tpl.name_prefix})()
    inputs = fam.inputs_from(stub, init)
    q, sure, maybe = oracle_sets(inputs.args[0], **inputs.kwargs)
    args = [init[n] for n in template.ref_inputs]
    torch.manual_seed(0)
    if "multinomial" in inspect.getsource(tpl.reference):
        samples = np.stack([tpl.reference(*args).numpy() for _ in range(2000)], axis=1)
        fit = judge_samples(samples, q, sure, maybe)
        assert fit.ok and fit.tested_rows == q.shape[0], fit.detail
        print(f"{tpl.name_prefix}: 2000 draws a row pass (bins {fit.num_bins}, L {fit.level:.1f})")
    else:
        got = tpl.reference(*args).numpy()
        assert (got == q.argmax(1)).all() and maybe[np.arange(len(got)), got].all()
        print(f"{tpl.name_prefix}: the reference is the argmax (our mode), not a draw")


# ------------------------------------------------------------------------------------ chain speculative sampling

def _chain_named(vocab=48, batch=3, spec=3):
    """A draft close to the target (half of it the target's rows), draft tokens drawn from the draft."""
    import torch

    g = torch.Generator().manual_seed(1)

    def dist(*shape):
        return torch.softmax(torch.randn(*shape, generator=g) * 1.5, -1)

    target = dist(batch, spec + 1, vocab)
    draft = 0.5 * target[:, :spec] + 0.5 * dist(batch, spec, vocab)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=g).reshape(batch, spec).to(torch.int32)
    return {"draft_probs": draft.float(), "draft_token_ids": ids, "target_probs": target.float()}


_ACCEPT = "float(torch.rand(())) * d[b, i, tok] <= t[b, i, tok]"
CHAIN = {  # name: (edit of the reference or None, the status, what the log names)
    "reference": (None, "PASSED", ""),
    "torch_eager": (None, "PASSED", ""),  # our rejection_sample wrapped as a Solution
    "accept_iff_target_ge_draft": ((_ACCEPT, "d[b, i, tok] <= t[b, i, tok]"), "INCORRECT_NUMERICAL", "outcome ("),
    "recover_from_target": (("residual if residual.sum() > 0 else t[b, i]", "t[b, i]"), "INCORRECT_NUMERICAL",
                            "outside the kept set"),
    "bonus_from_first_row": (("out[b, i] = int(torch.multinomial(t[b, i], 1))",
                              "out[b, i] = int(torch.multinomial(t[b, 0], 1))"), "INCORRECT_NUMERICAL", "row "),
}


@pytest.mark.parametrize("name", list(CHAIN))
def test_chain_speculative_sampling_on_a_foreign_workload(tmp_path, name):
    """chain_speculative_sampling_v48 (3 requests, 3 drafts each): the Definition's reference (its own RNG) and our
    rejection_sample wrapped as a Solution pass; accepting iff target >= draft (the template's deterministic
    rule), recovering from the target instead of the residual, and a bonus drawn from the wrong row fail."""
    from servekernels.trace.families import ChainSpeculativeSampling, family_for_definition
    from servekernels.trace.wrap import solution_for

    fam = ChainSpeculativeSampling()
    d = fam.definition(48)
    found, why = family_for_definition(d)
    assert isinstance(found, ChainSpeculativeSampling), why
    edit, status, what = CHAIN[name]
    src = (solution_for(d, "kernels.torch_eager", name=name) if name == "torch_eager" else
           d.reference if edit is None else _wrong(d.reference, *edit))
    axes = {"batch_size": 3, "num_speculative": 3, "num_speculative_plus_1": 4}
    ev = _judge(tmp_path, d, _chain_named(), {name: src}, axes)[(name, "theirs")]
    assert ev.status == status, ev.log
    assert what in (ev.log or ""), ev.log


@pytest.mark.slow
def test_flashinfer_template_chain_reference_is_no_draw_of_its_law():
    """The finding: FlashInfer's chain_speculative_sampling template reference is deterministic (accept iff
    target >= draft, argmax recovery and bonus); on the template's own init inputs, as a Solution it fails the
    law the API samples (and ours), while its fi_trace dump loads and finds this family."""
    import importlib

    pytest.importorskip("flashinfer.trace.templates", reason="optional leg: FlashInfer's trace templates absent")
    from kernels.ops import registry
    from servekernels.trace.families import ChainSpeculativeSampling, family_for_definition
    from servekernels.trace.judge import evaluate
    from servekernels.trace.schema import Definition

    tpl = importlib.import_module("flashinfer.trace.templates.sampling").chain_speculative_sampling_trace
    init = tpl.init(device="cpu", batch_size=2, num_speculative=3, vocab_size=64)
    dump = Definition.from_json(tpl.build_fi_trace_fn("flashinfer.chain_speculative_sampling")(**init), "dump")
    fam, why = family_for_definition(dump)
    assert isinstance(fam, ChainSpeculativeSampling), (dump.name, why)
    first = tpl.reference(**init)
    assert (tpl.reference(**init) == first).all()  # no randomness

    def solve(named):
        return {"accepted_token_ids": tpl.reference(**named)}

    status, log, _ = evaluate(registry()["rejection_sample"], fam, dump, fam.implementation(dump, solve),
                              fam.inputs_from(dump, init))
    assert status == "INCORRECT_NUMERICAL", log
    print(f"chain_speculative_sampling template reference under the API's law: {log[:300]}")
