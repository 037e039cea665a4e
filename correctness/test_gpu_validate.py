"""perf/gpu_validate.sh (the prepared first GPU run) against its stub python, and perf/gpu_probe.py without a GPU.

The dry run (``--dry-run``: ``perf/gpu_validate_stub.sh`` stands in for python and records its argv) exercises
the whole control flow here in seconds: the steps and their order, the time boxes and the total budget, at
most 8 files in ``$OUT``, report groups kept up to a cut, and the exit status. What the steps measure on a GPU
is not tested here (there is none); ``perf/gpu_probe.py`` is, up to its "no CUDA device" exit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only("the GPU-run script against its stub python, and the probe up to its no-GPU exit")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "perf" / "gpu_validate.sh"
STUB = ROOT / "perf" / "gpu_validate_stub.sh"
FILES = {"steps.log", "env.json", "probe.json", "pytest-gpu.txt", "check.txt", "graphs.jsonl", "report-quick.md",
         "report-quick.jsonl"}
GROUPS = ["attention", "small", "gemm", "moe"]


def _groups() -> dict[str, list[str]]:
    """The script's report groups: name -> -k substrings."""
    line = re.search(r"^REPORT_GROUPS=\((.*)\)$", SCRIPT.read_text(), re.M).group(1)
    return {g.split(":")[0]: g.split(":", 1)[1].split(",") for g in re.findall(r'"([^"]+)"', line)}


def _selection(name: str, groups: dict[str, list[str]]) -> list[str]:
    """The report arguments the script gives group ``name``: ``-k`` each substring, or for the group with none
    (the rest) ``--skip`` every other group's."""
    if groups[name] == [""]:
        return [f"--skip {s}" for g, subs in groups.items() if subs != [""] for s in subs]
    return [f"-k {s}" for s in groups[name]]


def dry_run(tmp_path, *args, **knobs) -> tuple[subprocess.CompletedProcess, Path, list[str], float]:
    """Run the script against the stub; (process, OUT, the stub's argv lines, seconds)."""
    assert shutil.which("bash") and shutil.which("timeout")
    out, stub_log = tmp_path / "out", tmp_path / "stub.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_VALIDATE_", "SERVEKERNELS_GPU_VALIDATE"))}
    env.update(OUT=str(out), GPU_VALIDATE_STUB_LOG=str(stub_log), **knobs)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    calls = stub_log.read_text().splitlines() if stub_log.exists() else []
    return proc, out, calls, time.perf_counter() - t0


def _status(out: Path, step: str) -> str:
    """The status column of ``step`` in steps.log's summary."""
    summary = out.joinpath("steps.log").read_text().split("\nsummary (", 1)[1]
    line = next(ln for ln in summary.splitlines() if ln.split()[:1] == [step])
    return re.split(r"\s{2,}", line.strip())[1]


def test_both_scripts_parse():
    for path in (SCRIPT, STUB):
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert os.access(path, os.X_OK), f"{path} is not executable"


def test_dry_run_runs_every_step_in_order_into_at_most_8_files(tmp_path):
    proc, out, calls, _ = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name for p in out.iterdir()} == FILES and len(FILES) <= 8
    groups = _groups()
    assert list(groups) == GROUPS
    expected = ["-m perf.gpu_probe env", "-m perf.gpu_probe bandwidth",
                "-m pytest -m gpu -q -p no:cacheprovider --durations=15 correctness", "-m servekernels.cli check",
                "-m perf.gpu_probe graphs"]
    assert calls[:5] == expected
    reports = calls[5:]
    assert len(reports) == len(groups)
    for call, name in zip(reports, groups):
        ks = " ".join(_selection(name, groups))
        assert call.startswith(f"-m servekernels.cli report --quick --gpu h200 {ks} --out "), call
        report_out = Path(call.split("--out ", 1)[1])
        assert out not in report_out.parents and not report_out.exists()  # a scratch folder, removed at the end
    md = out.joinpath("report-quick.md").read_text()
    for name in groups:
        sel = _selection(name, groups)
        assert f"## report group {name} ({' '.join(sel)}): pass" in md
        assert all(f"| {f} |" in md for f in sel)  # the group's own report.md, kept
    rows = [json.loads(ln) for ln in out.joinpath("report-quick.jsonl").read_text().splitlines()]
    assert [r["selection"]["k"] for r in rows] == [[s for s in subs if s] for subs in groups.values()]
    log = out.joinpath("steps.log").read_text()
    assert "DRY RUN" in log and log.rstrip().endswith("every step passed")
    assert out.joinpath("graphs.jsonl").read_text().count('"replay_equals_eager": true') == 2


def test_a_failing_step_does_not_stop_the_later_ones(tmp_path):
    proc, out, calls, _ = dry_run(tmp_path, GPU_VALIDATE_STUB_FAIL="servekernels.cli check")
    assert proc.returncode == 1
    assert _status(out, "check") == "FAIL (exit 1)"
    assert calls[4] == "-m perf.gpu_probe graphs" and len(calls) == 5 + len(GROUPS)  # everything after still ran
    assert all(_status(out, s) == "pass" for s in ["graphs"] + [f"report-{g}" for g in GROUPS])
    assert "NOT everything passed" in proc.stdout


def test_a_step_past_its_box_is_cut_and_the_later_ones_run(tmp_path):
    proc, out, calls, seconds = dry_run(tmp_path, GPU_VALIDATE_STUB_HANG="gpu_probe graphs",
                                        GPU_VALIDATE_TIMEOUT_graphs="1")
    assert proc.returncode == 1
    assert _status(out, "graphs") == "TIMED OUT"
    assert len(calls) == 5 + len(GROUPS) and _status(out, "report-moe") == "pass"
    assert seconds < 30  # the stub sleeps 60 s: the box ended it


def test_a_report_cut_by_the_budget_keeps_the_groups_before_it(tmp_path):
    """Budget 20 s: the gemm group hangs, runs into the budget (clipped box) and is killed; moe has no time left
    and is skipped; attention and small are in report-quick.md and .jsonl."""
    proc, out, calls, seconds = dry_run(tmp_path, GPU_VALIDATE_STUB_HANG="-k w13/", GPU_VALIDATE_BUDGET_S="20")
    assert proc.returncode == 1
    assert seconds < 20 + 5  # the budget, with the kill grace it leaves
    assert [_status(out, f"report-{g}") for g in GROUPS] == ["pass", "pass", "TIMED OUT", "skipped: out of time"]
    md = out.joinpath("report-quick.md").read_text()
    assert "| -k /decode/ |" in md and "| --skip w13/ |" in md and "group gemm (-k w13/): TIMED OUT" in md
    assert "| -k w13/ |" not in md and "group moe (-k /moe-): skipped: out of time" in md
    assert len(out.joinpath("report-quick.jsonl").read_text().splitlines()) == 2
    assert not any("-k /moe-" in c for c in calls)


def test_a_gpu_without_a_spec_skips_the_report_and_says_so(tmp_path):
    proc, out, calls, _ = dry_run(tmp_path, GPU_VALIDATE_STUB_SLUG="none")
    assert proc.returncode == 1
    assert not any(" report " in c for c in calls) and len(calls) == 5
    assert [_status(out, f"report-{g}") for g in GROUPS] == ["skipped: no GPU spec"] * len(GROUPS)
    assert "no spec in roofline/specs.py fits this GPU" in out.joinpath("report-quick.md").read_text()


def test_no_cuda_device_is_not_a_gpu_run(tmp_path):
    proc, out, calls, _ = dry_run(tmp_path, GPU_VALIDATE_STUB_SLUG="no-gpu")
    assert proc.returncode == 2 and calls == ["-m perf.gpu_probe env"]
    assert "no CUDA device" in proc.stderr


def test_the_real_probe_here_records_the_environment_and_stops(tmp_path):
    """Not a dry run: this machine's python through perf/gpu_probe.py env, which finds no CUDA device."""
    from kernels.runtime import cuda_available

    if cuda_available():
        pytest.skip("a GPU is here: the script would run the full validation")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_VALIDATE_", "SERVEKERNELS_GPU_VALIDATE"))}
    env.update(OUT=str(out), SERVEKERNELS_GPU_VALIDATE_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    doc = json.loads(out.joinpath("env.json").read_text())
    assert doc["cuda"] is False and doc["slug"] is None and doc["torch"] and doc["python"]
    assert {p.name for p in out.iterdir()} == {"steps.log", "env.json"}


def test_the_report_groups_select_every_quick_case_once():
    from roofline.catalogue import catalogue

    quick = [c.name for c in catalogue() if c.quick]
    groups = _groups()
    rest = [g for g, subs in groups.items() if subs == [""]]
    assert len(rest) == 1, groups  # one group takes what the others leave, so a new op needs no entry
    named = {g: subs for g, subs in groups.items() if g not in rest}
    for name in quick:
        hits = [g for g, subs in named.items() if any(s in name for s in subs)] or rest
        assert len(hits) == 1, (name, hits)
    for g, subs in named.items():
        assert all(any(s in name for name in quick) for s in subs), (g, subs)  # no -k that selects nothing
    assert any(not any(s in name for subs in named.values() for s in subs) for name in quick)  # the rest: some


def test_the_budget_fits_nine_minutes():
    text = SCRIPT.read_text()
    budget = int(re.search(r"budget=\$\{GPU_VALIDATE_BUDGET_S:-(\d+)\}", text).group(1))
    grace = int(re.search(r"^KILL_GRACE=(\d+)", text, re.M).group(1))
    assert budget + grace <= 9 * 60


# --------------------------------------------------------------------------------------------- gpu_probe.py

@pytest.mark.parametrize("what", ["bandwidth", "graphs"])
def test_probe_without_a_gpu_exits_2_saying_why(what, capsys, monkeypatch):
    from perf import gpu_probe

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the probe's own check, after the import of triton
    assert gpu_probe.main([what]) == 2
    assert capsys.readouterr().err.startswith(f"gpu_probe {what}: no CUDA device")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu_probe.main([what]) == 2
    assert "TRITON_INTERPRET is set" in capsys.readouterr().err


@pytest.mark.parametrize("name,cc,sms,slug,nearest", [
    ("NVIDIA H200", (9, 0), 132, "h200", False),
    ("NVIDIA H100 80GB HBM3", (9, 0), 132, "h100-sxm", False),
    ("NVIDIA A100-SXM4-80GB", (8, 0), 108, "a100-80gb", False),
    ("NVIDIA GH200 480GB", (9, 0), 132, "h100-sxm", True),  # not in the table: same sm_90, nearest SM count
    ("NVIDIA A100-SXM4-40GB", (8, 0), 108, "a100-80gb", True),
    ("Tesla T4", (7, 5), 40, None, False),
])
def test_slug_for_a_device_name(name, cc, sms, slug, nearest):
    from perf.gpu_probe import slug_for

    got, note = slug_for(name, cc, sms)
    assert got == slug
    assert ("NEAREST" in note) == nearest
    if slug is None:
        assert "SERVEKERNELS_GPU_SPECS" in note
