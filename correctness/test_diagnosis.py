"""A failure names its bug: each wrong module of ``correctness/wrong_impls/`` fails its check case with a
diagnosis that names the planted structure it breaks (``kernels/testing/diagnosis.py``), in the batch's own
coordinates; ``check --json`` is one document of every row; a passing empty-rows check reads as what it found.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from kernels.impls import load
from kernels.ops import get
from kernels.testing.assertions import describe_mismatch, worst_index
from servekernels.check import run_case, spec_case

W = "correctness.wrong_impls."


def _failures(module: str, op: str, case: str) -> dict:
    spec = get(op)
    results = run_case(spec_case(spec, case, spec.check[case], load(W + module)))
    return {r.op: r for r in results if not r.ok}


@pytest.mark.host_only("the off-by-one prefill is float64 numpy (no kernel); check builds on default_device()")
def test_a_causal_off_by_one_is_named_with_its_loud_future_key():
    failed = _failures("causal_off_by_one", "paged_prefill", "qwen2.5-7b/prefill-chunked")
    assert set(failed) == {"out", "lse"}
    for r in failed.values():
        assert "lets one future key through" in r.diagnosis, r.diagnosis
        assert "next key is the loud newest key" in r.diagnosis, r.diagnosis
        assert "every sequence's last query is right" in r.diagnosis, r.diagnosis
        assert r.diagnosis.startswith("worst at seq "), r.diagnosis  # the batch's coordinates, not flat tokens


KERNEL_WRAPPERS = {  # module -> (op, case, the output whose diagnosis is checked, what it must say)
    "base2_lse": ("paged_decode", "gemma2-like/decode-window64-cap50", "lse",
                  "x 1.4427 at every wrong element (1/ln 2"),
    "ignored_window": ("paged_decode", "gemma2-like/decode-window64-cap50", "out",
                       "the sliding window (64) is ignored"),
    "dropped_newest_key": ("paged_decode", "gemma2-like/decode-window64-cap50", "out", "the newest key is dropped"),
}


@pytest.mark.meta_unsupported("the diagnosis reads the outputs' values: a meta tensor has none")
@pytest.mark.parametrize("module", list(KERNEL_WRAPPERS))
def test_a_wrong_kernel_wrapper_is_named(module, device):
    op, case, output, says = KERNEL_WRAPPERS[module]
    failed = _failures(module, op, case)  # check builds on default_device(), the device fixture's device
    assert output in failed and says in failed[output].diagnosis, {o: r.diagnosis for o, r in failed.items()}
    if module == "ignored_window":
        assert "window excludes the loud key 0" in failed[output].diagnosis


@pytest.mark.host_only("numpy comparisons only")
def test_the_worst_element_is_one_definition_in_the_table_and_the_detail():
    from kernels.testing.judge import compare

    expected = np.array([1.0, 10.0, 100.0])
    actual = np.array([1.5, 10.0, 103.0])
    atol = np.array([0.1, 1.0, 100.0])  # the largest |diff| (3.0) is within its tolerance; element 0 is not
    assert worst_index(actual, expected, atol) == (0,)
    v = compare("op", "out", actual, expected, atol)
    assert (v.max_abs_err, v.atol) == (0.5, 0.1)
    assert "worst (largest |diff| / atol) at (0,): |diff| 0.5, atol 0.1" in describe_mismatch(actual, expected,
                                                                                              atol=atol)


@pytest.mark.host_only("the right wrapper is the float64 reference (no kernel); check builds on default_device()")
def test_check_json_is_one_document_of_every_row_with_its_diagnosis(capsys):
    from servekernels.cli import main

    rc = main(["check", "--json", "--impl", W + "causal_off_by_one", "--impl", W + "reference_wrapper",
               "-k", "qwen2.5-7b/prefill-chunked", "--exact", "--seed", "5"])
    doc = json.loads(capsys.readouterr().out)  # stdout is the document and nothing else
    assert rc == 1 and doc["seed"] == 5 and doc["failed"] >= 2 and "--seed 5" in doc["replay"]
    rows = {(r["impl"], r["output"]): r for r in doc["rows"] if r["case"] == "qwen2.5-7b/prefill-chunked"}
    bad, good = rows[(W + "causal_off_by_one", "out")], rows[(W + "reference_wrapper", "out")]
    assert bad["verdict"] == "fail" and bad["margin"] > 1 and "future key" in bad["diagnosis"]
    assert bad["margin"] == pytest.approx(bad["worst_err"] / bad["tol"])
    assert good["verdict"] == "pass" and good["margin"] <= 1 and good["diagnosis"] == "" and good["seed"] == 5


@pytest.mark.host_only("the right wrapper is the float64 reference (no kernel); check builds on default_device()")
def test_a_passing_empty_rows_check_prints_what_it_found(capsys):
    from servekernels.cli import main

    assert main(["check", "--impl", W + "reference_wrapper", "-k", "qwen2.5-7b/decode-ragged", "--exact"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "empty rows" in line]
    assert lines and all("empty (1 rows: out 0, LSE -inf as required)" in line and "nan" not in line
                         for line in lines), lines


@pytest.mark.host_only("the off-by-one prefill and the reference are float64 numpy (no kernel)")
def test_a_parity_assertion_carries_the_diagnosis():
    from correctness.wrong_impls import causal_off_by_one
    from kernels import reference as R
    from kernels.testing.assertions import assert_close
    from kernels.testing.diagnosis import for_batch
    from kernels.testing.paged import make_paged_batch
    from kernels.testing.tolerances import attention_out_atol

    b = make_paged_batch([40, 17], [12, 17], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16,
                         loud_future=True, seed=1)
    out = causal_off_by_one.paged_prefill(*b.prefill_args(), **b.kwargs)
    with pytest.raises(AssertionError, match="diagnosis: worst at seq .* the causal mask lets one future key"):
        assert_close(out, R.paged_prefill(*b.prefill_args(), **b.kwargs),
                     atol=attention_out_atol("float16", b.attention_scales()[0]), diagnose=for_batch(b, False, "out"))


@pytest.mark.host_only("the off-by-one prefill is float64 numpy (no kernel, nothing counted); the report builds on "
                       "the CPU itself")
def test_the_report_parity_detail_leads_with_the_diagnosis():
    from roofline.catalogue import catalogue
    from roofline.report import count_case
    from roofline.specs import get_spec

    case = next(c for c in catalogue() if c.op == "paged_prefill" and c.name.endswith("mixed-4seq"))
    row = count_case(case, get_spec("h100-sxm"), provider=load(W + "causal_off_by_one"))
    assert row["parity"] == "FAIL"
    assert row["parity_detail"].startswith("paged_prefill.out diagnosis: worst at seq "), row["parity_detail"][:300]
    assert "lets one future key through" in row["parity_detail"]


def _corrupted(how: str):
    """A decode batch (partial and whole last blocks, an empty sequence, GQA groups of 2), the reference's
    outputs, and one output corrupted ``how``."""
    from kernels import reference as R
    from kernels.testing.paged import make_paged_batch
    from kernels.testing.tolerances import attention_out_atol, lse_atol

    b = make_paged_batch([17, 32, 0, 48, 5], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, seed=2)
    out, lse = R.paged_decode(*b.decode_args(), **b.kwargs, return_lse=True)
    magnitude, logit_max = b.attention_scales(decode=True)
    tol = {"out": attention_out_atol("float16", magnitude), "lse": lse_atol("float16", logit_max)}
    got = {"out": out.copy(), "lse": lse.copy()}
    partial = (b.seq_lens.numpy() % 16) != 0
    if how == "nan in partial blocks":
        got["out"][partial & (b.seq_lens.numpy() > 0)] = np.nan
    elif how == "one head of each group":
        got["out"][:, 1::2] += 0.5
    elif how == "lse offset":
        got["lse"] = np.where(np.isfinite(lse), lse + 0.25, lse)
    elif how == "empty rows":
        got["out"][b.seq_lens.numpy() == 0] = 1.0
    output = "lse" if how.startswith("lse") else "out"
    return b, output, got[output], {"out": out, "lse": lse}[output], tol[output]


@pytest.mark.host_only("the reference's outputs corrupted by hand (numpy)")
@pytest.mark.parametrize("how, says", [
    ("nan in partial blocks", "a poisoned slot no sequence owns was read"),
    ("nan in partial blocks", "wrong only in sequences where seq_len % block_size != 0"),
    ("one head of each group", "wrong only at heads [1] of each GQA group of 2"),
    ("lse offset", "LSE = reference +0.25 at every wrong element (a constant offset)"),
    ("empty rows", "wrong only in empty sequences"),
])
def test_a_structure_of_the_wrong_elements_is_named(how, says):
    from kernels.testing.diagnosis import attention

    b, output, actual, expected, tol = _corrupted(how)
    text = attention(b, True, output, actual, expected, tol)
    assert says in text, text


@pytest.mark.host_only("the reference without its sinks as the 'implementation' (numpy): no kernel")
def test_ignored_sinks_are_named():
    """An implementation that drops the sinks (the reference run without them) is named as such; the other
    counterfactuals (causal shift, window, scale) carry the sinks, so none of them explains it instead."""
    from kernels import reference as R
    from kernels.testing.diagnosis import attention
    from kernels.testing.judge import expected_outputs

    spec = get("paged_decode")
    shape = dict(num_seqs=4, q_len=1, seq_len=[200, 40, 1, 0], block_size=16, dtype="bfloat16",
                 kv_dtype="bfloat16", num_q_heads=8, num_kv_heads=2, head_dim=64, sliding_window=64, sinks=4.0)
    inputs = spec.build(shape, "cpu", 3)
    expected = expected_outputs(spec, inputs)
    tol = spec.tolerance(inputs, expected)
    kw = {k: v for k, v in inputs.kwargs.items() if k != "sinks"}
    out, lse = R.paged_decode(*inputs.args, **kw, return_lse=True)
    for output, actual in (("out", out), ("lse", lse)):
        text = attention(inputs.data, True, output, actual, expected[output], tol[output])
        assert "the attention sinks are ignored" in text, text


# ------------------------------------------------------------------------------ grouped GEMM and fused MoE

def _gemm_case(op: str, shape: dict):
    from kernels.testing.judge import expected_outputs

    spec = get(op)
    inputs = spec.build(shape, "cpu", 3)
    expected = expected_outputs(spec, inputs)
    return spec, inputs, expected, spec.tolerance(inputs, expected)


@pytest.mark.host_only("planted outputs from the float64 reference: no kernel")
def test_a_grouped_gemm_failure_names_the_planted_weight_bug():
    """Outputs computed by the reference on weights with one bug planted each read as that bug."""
    from kernels import reference as R
    from kernels.reference.quant import Fp8Weight
    from kernels.testing.diagnosis_experts import grouped_gemm

    spec, inputs, expected, tol = _gemm_case("grouped_gemm_int4", dict(tokens=40, experts=4, n=72, k=128,
                                                                       dtype="bfloat16", group_size=32))
    a, w, offs = inputs.args
    q = w.qweight
    swapped = type(w)(((q & 0xF) << 4) | (q >> 4), w.scales, w.zeros, w.group_size)
    text = grouped_gemm(inputs, "y", R.grouped_gemm_int4(a, swapped, offs), expected["y"], tol["y"])
    assert "the two nibbles of each byte are swapped" in text, text
    assert text.startswith("worst at row "), text

    spec, inputs, expected, tol = _gemm_case("grouped_gemm_fp8", dict(tokens=40, experts=4, n=72, k=128,
                                                                      dtype="bfloat16", group_size=128,
                                                                      granularity="block", out_dtype="bfloat16"))
    *act, w, offs = inputs.args
    import torch

    unscaled = Fp8Weight(w.data, torch.ones_like(w.scales), w.granularity, w.block_size)
    text = grouped_gemm(inputs, "y", R.grouped_gemm_fp8(*act, unscaled, offs, **inputs.kwargs), expected["y"],
                        tol["y"])
    assert "the weight scales are not applied" in text, text


@pytest.mark.host_only("planted outputs: no kernel")
def test_a_grouped_gemm_failure_names_its_rows_experts_and_n_tail():
    from kernels.testing.diagnosis_experts import grouped_gemm

    spec, inputs, expected, tol = _gemm_case("grouped_gemm", dict(tokens=40, experts=4, n=72, k=64,
                                                                  dtype="bfloat16", group_size=None))
    y = np.array(expected["y"], dtype=np.float64)
    tail = y.copy()
    tail[:, 64:] += 1.0  # the 8 columns past the last full 64-tile
    assert "wrong only in columns >= 64 (N = 72" in grouped_gemm(inputs, "y", tail, y, tol["y"])
    offs = inputs.args[-1].numpy()
    first = y.copy()
    starts = [int(offs[x]) for x in range(len(offs) - 1) if offs[x + 1] > offs[x]]
    first[starts] += 1.0
    assert "each expert's first row" in grouped_gemm(inputs, "y", first, y, tol["y"])


@pytest.mark.host_only("planted outputs from the float64 reference: no kernel")
def test_a_fused_moe_failure_names_the_router_weight_bug():
    import torch

    from kernels import reference as R
    from kernels.testing.diagnosis_experts import fused_moe

    spec = get("fused_moe")
    inputs = spec.build(spec.check["qwen2-moe-like/moe-unnormalized-weights"], "cpu", 0)
    x, w13, w2, ids, wts = inputs.args
    expected = R.fused_moe(*inputs.args)
    tol = spec.tolerance(inputs, {"out": expected})["out"]
    ignored = R.fused_moe(x, w13, w2, ids, torch.ones_like(wts))
    text = fused_moe(inputs, "out", ignored, expected, tol)
    assert "the router's weights are ignored" in text and text.startswith("worst at token "), text


@pytest.mark.host_only("the reference provider's numpy outputs: no kernel")
def test_the_empty_rows_check_reads_numpy_outputs():
    """``check --impl reference``: the reference returns numpy arrays; the empty-rows verdict reads them."""
    from kernels import reference as R

    spec = get("paged_decode")
    inputs = spec.build(spec.check["qwen2.5-7b/decode-ragged"], "cpu", 0)
    actual = spec.call(R.paged_decode, inputs)
    assert isinstance(actual["out"], np.ndarray)
    rows = spec.extra_checks(inputs, actual)
    assert rows and all(ok for _, ok, *_ in rows), rows
