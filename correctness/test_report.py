"""``servekernels report --quick`` on a tiny catalogue, and the timing harness's CPU-side contract."""
from __future__ import annotations

import csv
import json

import pytest

from kernels.ops import Case
from kernels.ops.models import attention_shape as _attn
from kernels.ops.models import gemm_shape
from roofline import report

TINY_HEADS = dict(num_q_heads=8, num_kv_heads=2, head_dim=32)


def tiny_catalogue() -> list[Case]:
    return [
        Case("paged_decode", "tiny/decode", _attn([4096, 3000], 1, **TINY_HEADS), _attn([40, 17], 1, **TINY_HEADS),
             True, "decode_traffic,decode_bw"),
        Case("merge_states", "tiny/merge",
             dict(num_states=2, num_tokens=64, num_heads=8, head_dim=32, dtype="bfloat16"),
             dict(num_states=3, num_tokens=3, num_heads=4, head_dim=32, dtype="bfloat16"), True),
        Case("grouped_gemm", "tiny/gemm", gemm_shape(16, 4, 2, n=64, k=64), gemm_shape(4, 4, 2, n=16, k=32), True),
    ]


@pytest.fixture
def tiny(monkeypatch):
    import sys
    import types

    import kernels.triton.ops.merge_states as merge

    monkeypatch.setattr(report, "catalogue", tiny_catalogue)
    # a second implementation that provides only merge_states: the report must list its missing ops visibly
    partial = types.ModuleType("partial_impl")
    partial.merge_states = merge.merge_states
    monkeypatch.setitem(sys.modules, "partial_impl", partial)


def _modeled(monkeypatch):
    """Force the report's modeled path (what a run without a GPU takes), also on a GPU box."""
    import kernels.runtime

    monkeypatch.setattr(kernels.runtime, "cuda_available", lambda: False)


def _fake_gpu(monkeypatch, name: str):
    """Stand in for a GPU box in measured mode whose device 0 is called ``name`` (nothing is launched)."""
    import torch

    import kernels.runtime

    monkeypatch.setattr(kernels.runtime, "cuda_available", lambda: True)
    monkeypatch.setattr(kernels.runtime, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def _run(tmp_path, *extra):
    from servekernels.cli import main

    return main(["report", "--quick", "--out", str(tmp_path), *extra])


REQUIRED_ROW = ("op", "case", "shape", "dtype", "compute_dtype", "flops", "bytes_min", "bytes_counted", "intensity",
                "bound", "t_roof_us", "t_measured_us", "pct_of_roof", "parity", "max_rel_err")
ATTN_SHAPE = ("num_seqs", "q_len", "seq_len", "num_q_heads", "num_kv_heads", "head_dim", "block_size", "kv_dtype")
GEMM_SHAPE = ("tokens", "n", "k", "experts", "group_size")


@pytest.mark.interpreter("the modeled report's parity and counted traffic run in this process under the interpreter "
                         "(the tiny catalogue's partial_impl exists only here); measured: test_report_measured_on_a_gpu")
def test_report_quick_writes_four_files_with_required_fields(tiny, tmp_path, capsys):
    assert _run(tmp_path, "--impl", "servekernels", "--impl", "partial_impl") == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["report.csv", "report.json", "report.md", "roofline.png", "traffic.png"]
    assert (tmp_path / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["measured"] is False and doc["commit"]
    assert {"slug", "name", "hbm_bytes_per_s", "peak_flops", "sms", "l2_bytes"} <= set(doc["gpu"])
    assert doc["gpu"]["slug"] == "h100-sxm"
    assert doc["impls"] == ["servekernels", "partial_impl"]
    theirs = {r["case"]: r for r in doc["rows"] if r["impl"] == "partial_impl"}
    assert theirs["tiny/gemm"]["parity"] == "not provided" and theirs["tiny/merge"]["parity"] == "pass"
    assert theirs["tiny/merge"]["ours_over_theirs"]["bytes_counted_small"] == pytest.approx(1.0)  # the same kernel
    rows = {r["case"]: r for r in doc["rows"] if r["impl"] == "servekernels"}
    for r in rows.values():
        assert set(REQUIRED_ROW) <= set(r), set(REQUIRED_ROW) - set(r)
        assert r["t_measured_us"] is None and r["pct_of_roof"] is None  # nothing is timed without a GPU
    dec = rows["tiny/decode"]
    assert set(ATTN_SHAPE) <= set(dec["shape"])
    assert dec["parity"] == "pass" and 0 < dec["max_rel_err"] < 0.05
    assert dec["bytes_counted"] >= dec["bytes_min"] * 0.999  # counted traffic never beats the minimum here
    # t_roof = max(flops / peak, bytes_min / bandwidth)
    assert dec["t_roof_us"] == pytest.approx(max(dec["flops"] / 989.4e12, dec["bytes_min"] / 3.35e12) * 1e6)
    assert dec["bound"] == "memory"
    assert set(GEMM_SHAPE) <= set(rows["tiny/gemm"]["shape"])
    assert rows["tiny/gemm"]["parity"] == "pass"
    assert rows["tiny/merge"]["parity"] == "pass"
    md = (tmp_path / "report.md").read_text()
    # no GPU: the headline time column is the op's floor, labelled as such (never a row's own time)
    assert "MODELED" in md and "| op floor t_roof (us, modeled; not this impl's time) |" in md
    assert "**partial_impl: grouped_gemm not provided**" in md and "## Side by side" in md
    assert "not measured" in md  # the H100 bandwidth goal, next to what was (not) measured
    assert "scaled-down shape" in md
    with open(tmp_path / "report.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert {"gpu", "op", "case", "metric", "value"} <= set(csv_rows[0])
    metrics = {(r["case"], r["metric"]) for r in csv_rows}
    assert ("tiny/decode", "bytes_counted") in metrics and ("tiny/decode", "t_roof_us") in metrics
    assert "partial_impl: grouped_gemm not provided" in capsys.readouterr().err


@pytest.mark.meta_unsupported("the report judges the kernel's values against the reference")
def test_report_fails_on_a_wrong_kernel(tiny, tmp_path, monkeypatch, device):
    """A kernel off by 2% must turn the report red: parity is not decoration. Either mode: modeled (counted parity,
    here) or measured on a GPU (the full-size parity after timing, in this process, sees the wrong kernel)."""
    import kernels.triton.ops.merge_states as merge

    real = merge.merge_states

    def wrong(outs, lses):
        out, lse = real(outs, lses)
        return out * 1.02, lse

    monkeypatch.setattr(merge, "merge_states", wrong)  # the op spec's kernel (kernels/ops/merge_states.py)
    monkeypatch.setattr(report, "catalogue", lambda: [c for c in tiny_catalogue() if c.op == "merge_states"])
    assert _run(tmp_path) == 1
    row = json.loads((tmp_path / "report.json").read_text())["rows"][0]
    assert row["parity"] == "FAIL" and row["max_rel_err"] > 0.01


@pytest.mark.host_only("refused before any work")
def test_unknown_gpu_is_a_clear_error(tiny, tmp_path, capsys, monkeypatch):
    _modeled(monkeypatch)
    assert _run(tmp_path, "--gpu", "h900") == 2
    assert "unknown GPU 'h900'" in capsys.readouterr().err


@pytest.mark.host_only("measured mode with a faked device name: refused before any work")
def test_unknown_gpu_is_a_clear_error_in_measured_mode(tiny, tmp_path, capsys, monkeypatch):
    """On a GPU the spec table does not know: without --gpu it says so and asks for one (exit 2); with an
    unknown --gpu slug it names that slug (exit 2); nothing is written."""
    _fake_gpu(monkeypatch, "NVIDIA H900 SXM")
    assert _run(tmp_path / "a") == 2
    assert "GPU 'NVIDIA H900 SXM' is not in the spec table; pass --gpu SLUG" in capsys.readouterr().err
    assert _run(tmp_path / "b", "--gpu", "h900") == 2
    assert "unknown GPU 'h900'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.host_only("modeled with --no-count: nothing launches")
def test_other_gpu_changes_only_the_model(tiny, tmp_path, monkeypatch):
    _modeled(monkeypatch)  # on a GPU box the report measures the GPU it is on and ignores --gpu
    assert _run(tmp_path, "--gpu", "l4", "--no-count", "-k", "decode") == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    row = doc["rows"][0]
    assert doc["gpu"]["slug"] == "l4"
    assert row["t_roof_us"] == pytest.approx(row["bytes_min"] / 300e9 * 1e6)
    assert row["parity"] == "not checked" and row["bytes_counted"] is None


# ------------------------------------------------------------------------------------------- timing harness

@pytest.mark.gpu
def test_report_measured_on_a_gpu(tiny, tmp_path, capsys):
    """Measured mode: the detected GPU's spec, a time per case, parity checked at full size after timing."""
    assert _run(tmp_path, "--no-count", "-k", "merge") == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["measured"] is True and doc["time_note"] == "measured"
    (row,) = [r for r in doc["rows"] if r["impl"] == "servekernels"]
    assert row["t_measured_us"] > 0 and row["parity"] == "pass"
    assert "report (measured)" in capsys.readouterr().out


@pytest.mark.host_only("the harness's quantile arithmetic and policy")
def test_harness_quantiles_and_policy():
    from perf import harness

    med, p20, p80 = harness.quantiles([5.0, 1.0, 4.0, 2.0, 3.0, 100.0])
    assert med == 3.5 and p20 <= med <= p80 < 100.0
    with pytest.raises(ValueError, match="flush_factor"):
        harness.TimingPolicy(flush_factor=1.0)


@pytest.mark.host_only("refuses before timing anything (skipped on a GPU, where the gpu test times)")
def test_harness_refuses_to_time_without_a_gpu():
    from kernels.runtime import cuda_available, interpreter_enabled
    from perf import harness

    if cuda_available() and not interpreter_enabled():
        pytest.skip("a GPU is here: the gpu-marked test times for real")
    with pytest.raises(harness.GpuUnavailable):
        harness.measure(lambda: None)


@pytest.mark.gpu
def test_harness_times_and_rechecks_on_gpu():
    import torch

    from perf import harness

    x = torch.randn(1 << 20, device="cuda")
    checked = []
    t = harness.measure(lambda: x * 2, op="scale", provider="torch", policy=harness.QUICK_POLICY,
                        check=lambda out: checked.append(torch.equal(out, x * 2)))
    assert checked == [True] and 0 < t.p20_us <= t.median_us <= t.p80_us


@pytest.mark.host_only("the nsys script without nsys on PATH")
def test_nsys_script_without_nsys_says_so(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=str(tmp_path))  # no nsys on this PATH
    proc = subprocess.run([sys.executable, "-m", "perf.nsys_profile"], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2
    assert "nsys" in proc.stderr and "Traceback" not in proc.stderr
    assert "nvtx_sum,nvtx_gpu_proj_sum" in proc.stderr


@pytest.mark.host_only("a tiny case prepared on the host, the reference as its provider; no kernel")
def test_a_prepared_case_computes_its_tolerance_once_for_every_provider_checked():
    """At full size the bound is as much host float64 work as the reference: the measured report checks ours and
    each baseline against one ``expected``, so the tolerance is computed once per prepared case."""
    import dataclasses

    from kernels.impls import load
    from roofline import ops

    prep = ops.prepare("merge_states", {"num_states": 2, "num_tokens": 3, "num_heads": 2, "head_dim": 16,
                                        "dtype": "float32"}, "cpu", seed=0, provider=load("reference"))
    calls = []
    real = prep.spec.tolerance
    prep.spec = dataclasses.replace(prep.spec, tolerance=lambda inputs, expected: calls.append(1) or real(inputs,
                                                                                                        expected))
    expected = prep.expected()
    raw = tuple(prep.run()[name] for name in prep.spec.outputs)
    assert [prep.check_raw(raw, expected)[0] for _ in range(3)] == [True] * 3
    assert len(calls) == 1
    prep.check_raw(raw, prep.expected())  # a new expected: its own tolerance
    assert len(calls) == 2


@pytest.mark.host_only("formats a report document: no kernel")
def test_report_md_names_the_failing_output_and_its_diagnosis():
    from roofline.report_markdown import failures_section

    rows = [{"case": "a/pass", "impl": "servekernels", "parity": "pass"},
            {"case": "b/fail", "impl": "mine", "parity": "FAIL",
             "parity_detail": "paged_decode.lse diagnosis: LSE = reference x 1.4427 at every wrong element\nmore"}]
    text = "\n".join(failures_section({"rows": rows}))
    assert "- b/fail [mine]: paged_decode.lse diagnosis: LSE = reference x 1.4427" in text
    assert "a/pass" not in text and "more" not in text
    assert failures_section({"rows": rows[:1]}) == []


@pytest.mark.host_only("argument handling: no kernel")
def test_skip_leaves_cases_out_and_an_empty_selection_is_a_usage_error(tmp_path, capsys):
    assert _run(tmp_path, "--no-count", "-k", "/merge/", "-k", "/write_kv/", "--skip", "/merge/") == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["rows"] and all("/write_kv/" in r["case"] for r in doc["rows"])
    assert _run(tmp_path, "--no-count", "-k", "/merge/", "--skip", "/merge/") == 2
    assert "no case is left" in capsys.readouterr().err


@pytest.mark.host_only("the report document: no kernel")
def test_the_report_prints_the_flashinfer_trace_coverage(tmp_path):
    from servekernels.trace.coverage import coverage

    assert _run(tmp_path, "--no-count", "-k", "/merge/") == 0
    cov = json.loads((tmp_path / "report.json").read_text())["trace_coverage"]
    c = coverage()
    assert cov["families_judged"] == len(c["fib_judged"]) > 0 and cov["families"] == len(c["fib_families"])
    assert f"{cov['families_judged']} of {cov['families']} published flashinfer-bench definition families" in \
        (tmp_path / "report.md").read_text()
