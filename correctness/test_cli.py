"""The CLI: a user's mistake is one line on stderr and exit code 2 (no traceback); ``--help`` imports neither
torch nor triton; every option says what it does; ``-k`` selects by substring or, with ``--exact``, by name;
the ``check`` table stays aligned whatever the names. A bug (an error outside user input) keeps its traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from servekernels import cli
from servekernels.check import Case, Result

pytestmark = pytest.mark.host_only("CLI parsing and error messages (cases stubbed, subprocesses launch nothing)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _subprocess(code: str, env=None):
    env = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


# ------------------------------------------------------------------------------------------------ generate

GENERATE_MISTAKES = [
    ("empty-prompt", [""], "servekernels generate: prompt: must hold at least one token"),
    ("max-tokens-0", ["hi", "--max-tokens", "0"], "servekernels generate: --max-tokens: must be an int >= 1, got 0"),
    ("prompt-past-context", ["x" * 1024],
     "servekernels generate: prompt: 1024 tokens leave no room below max_model_len 1024"),
    ("block-size-0", ["hi", "--block-size", "0"], "servekernels generate: --block-size: must be an int >= 1, got 0"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in GENERATE_MISTAKES], ids=[c[0] for c in GENERATE_MISTAKES])
def test_generate_mistake_is_one_line_and_exit_2(argv, message, capsys):
    rc, out, err = _main(capsys, "generate", *argv, "--backend", "reference")
    assert rc == 2 and out == ""
    assert _one_line(err) == message


def test_generate_trace_into_a_missing_directory_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import engine.llm_engine

    def no_engine(*a, **k):
        raise AssertionError("the engine was built before the trace path was checked")

    monkeypatch.setattr(engine.llm_engine.LLMEngine, "__init__", no_engine)
    missing = tmp_path / "no" / "such" / "trace.json"
    rc, out, err = _main(capsys, "generate", "hi", "--trace", str(missing))
    assert rc == 2 and out == ""
    assert _one_line(err) == f"servekernels generate: --trace: directory '{missing.parent}' does not exist"
    assert not (tmp_path / "no").exists()


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """A ValueError raised while the engine runs is not the user's mistake: it propagates (positive control for
    the one-line conversion, which covers only the calls that check user input)."""
    import engine.llm_engine

    def broken(self, ids):
        raise ValueError("a bug inside the engine")

    monkeypatch.setattr(engine.llm_engine.LLMEngine, "run_to_completion", broken)
    with pytest.raises(ValueError, match="a bug inside the engine"):
        cli.main(["generate", "hi", "--backend", "reference", "--max-tokens", "1"])


def test_bad_option_value_is_one_line_and_exit_2(capsys):
    rc, out, err = _main(capsys, "generate", "hi", "--num-blocks", "many")
    assert rc == 2 and out == ""
    assert _one_line(err) == ("servekernels generate: error: argument --num-blocks: invalid int value: 'many' "
                              "(see servekernels generate --help)")


# -------------------------------------------------------------------------------------------------- report

def test_report_out_into_an_unwritable_path_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from roofline import report

    def no_work(*a, **k):
        raise AssertionError("the report started work before checking --out")

    monkeypatch.setattr(report, "build", no_work)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    rc, out, err = _main(capsys, "report", "--quick", "--out", str(a_file / "sub"))
    assert rc == 2 and out == ""
    assert _one_line(err) == f"servekernels report: --out: cannot create '{a_file / 'sub'}': '{a_file}' is not a directory"
    rc, out, err = _main(capsys, "report", "--quick", "--out", str(a_file))
    assert rc == 2 and _one_line(err) == f"servekernels report: --out: '{a_file}' exists and is not a directory"


def test_report_out_whose_parent_cannot_be_created_is_refused_before_any_work(capsys, monkeypatch):
    """``/proc`` exists and root may write to it, but no directory can be made there."""
    from roofline import report

    monkeypatch.setattr(report, "build", lambda *a, **k: pytest.fail("started work"))
    rc, out, err = _main(capsys, "report", "--quick", "--out", "/proc/no/such/dir")
    assert rc == 2 and out == ""
    assert _one_line(err).startswith("servekernels report: --out: cannot create '/proc/no/such/dir': ")
    assert not os.path.exists("/proc/no")


def test_report_out_into_a_new_directory_leaves_nothing_behind_a_usage_error(tmp_path, capsys):
    """The check makes and removes the missing directories: a later usage error (an unknown --impl) leaves none."""
    rc, out, err = _main(capsys, "report", "--quick", "--out", str(tmp_path / "a" / "b"), "--impl", "no_such_impl")
    assert rc == 2 and _one_line(err).startswith("servekernels report: --impl: ")
    assert not (tmp_path / "a").exists()


def test_report_out_into_a_read_only_directory_is_refused(tmp_path, capsys, monkeypatch):
    """``os.access`` stands in for the permission bits (root, which runs CI here, may write anywhere)."""
    from roofline import report

    monkeypatch.setattr(report, "build", lambda *a, **k: pytest.fail("started work"))
    read_only = str(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if p == read_only else real_access(p, mode))
    rc, out, err = _main(capsys, "report", "--quick", "--out", os.path.join(read_only, "new"))
    assert rc == 2 and _one_line(err) == f"servekernels report: --out: '{read_only}' is not writable"


def test_report_unknown_gpu_and_missing_spec_file(capsys, monkeypatch):
    import kernels.runtime

    monkeypatch.setattr(kernels.runtime, "cuda_available", lambda: False)  # modeled, also on a GPU box
    rc, out, err = _main(capsys, "report", "--quick", "--no-count", "--gpu", "h900")
    assert rc == 2 and _one_line(err).startswith("servekernels report: --gpu: unknown GPU 'h900'; known: ")
    rc, out, err = _main(capsys, "report", "--quick", "--no-count", "--gpu-spec-file", "/no/such/specs.json")
    assert rc == 2 and _one_line(err) == "servekernels report: --gpu-spec-file: no file '/no/such/specs.json'"


_GOOD_SPEC = {"slug": "my-gpu", "name": "n", "hbm_bytes_per_s": 1e12, "sms": 100, "l2_bytes": 2**25,
              "smem_per_sm_bytes": 2**17, "peak_flops": {"fp32": 1e14}}


@pytest.mark.parametrize("name,contents,says", [
    ("bad.json", "{not json", "not valid JSON (name a TOML file *.toml): Expecting property name"),
    ("bad.toml", "[[gpu]]\nslug = \n", "not valid TOML: Invalid value"),
    ("list.json", "[1]", "each GPU spec must be a table of fields (see roofline/specs.py), got 1"),
    ("empty.toml", "gpu = 3\n", "expected a list of GPU specs (JSON list or [[gpu]] TOML tables)"),
    ("missing.json", [{"slug": "x"}], "GPU spec 'x' is missing ['name', 'hbm_bytes_per_s', 'sms'"),
    ("word.json", [dict(_GOOD_SPEC, hbm_bytes_per_s="fast")], "GPU spec 'my-gpu': hbm_bytes_per_s must be a number, got 'fast'"),
    ("half.json", [dict(_GOOD_SPEC, sms=2.5)], "GPU spec 'my-gpu': sms must be an integer, got 2.5"),
    ("peaks.json", [dict(_GOOD_SPEC, peak_flops=[1])], "GPU spec 'my-gpu': peak_flops must be a table of dtype"),
    ("zero.json", [dict(_GOOD_SPEC, sms=0)], "my-gpu.sms: must be positive, got 0"),
    ("field.json", [dict(_GOOD_SPEC, sm=1)], "GPU spec 'my-gpu' has unknown field(s) ['sm']"),
])
def test_report_spec_file_with_bad_contents_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, name, contents,
                                                                   says):
    """Every mistake inside a ``--gpu-spec-file`` names the option, the file and the field, before any work."""
    import json

    from roofline import report

    monkeypatch.setattr(report, "build", lambda *a, **k: pytest.fail("started work"))
    path = tmp_path / name
    path.write_text(contents if isinstance(contents, str) else json.dumps(contents))
    rc, out, err = _main(capsys, "report", "--quick", "--no-count", "--gpu-spec-file", str(path))
    assert rc == 2 and out == "", err
    line = _one_line(err)
    assert line.startswith(f"servekernels report: --gpu-spec-file: {path}: ") and says in line, line


def test_report_bad_spec_file_in_the_environment_names_the_variable(tmp_path, capsys, monkeypatch):
    import json

    path = tmp_path / "specs.json"
    path.write_text(json.dumps([dict(_GOOD_SPEC, sms="many")]))
    monkeypatch.setenv("SERVEKERNELS_GPU_SPECS", str(path))
    rc, out, err = _main(capsys, "report", "--quick", "--no-count")
    assert rc == 2 and _one_line(err) == (f"servekernels report: $SERVEKERNELS_GPU_SPECS: {path}: GPU spec 'my-gpu': "
                                          "sms must be an integer, got 'many'")


def test_report_good_spec_file_is_used(tmp_path, capsys, monkeypatch):
    """Positive control for the two tests above: the same spec, well formed, is the report's GPU."""
    import json

    import kernels.runtime

    monkeypatch.setattr(kernels.runtime, "cuda_available", lambda: False)  # modeled, also on a GPU box

    path = tmp_path / "specs.json"
    path.write_text(json.dumps([_GOOD_SPEC]))
    rc, out, err = _main(capsys, "report", "--quick", "--no-count", "-k", "merge", "--gpu", "my-gpu",
                         "--gpu-spec-file", str(path), "--out", str(tmp_path / "out"))
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["gpu"]["slug"] == "my-gpu"


def test_report_k_selects_substrings_or_exact_names():
    from roofline.catalogue import select
    from servekernels.usage import UsageError

    cases = [types.SimpleNamespace(name=n, quick=q) for n, q in
             (("llama3-8b/decode/b1-ctx8k", True), ("llama3-8b/decode/b1-ctx8k-fp8kv", False), ("mixtral/w2", True))]
    assert [c.name for c in select(cases, False, ["b1-ctx8k"])] == [c.name for c in cases[:2]]
    assert [c.name for c in select(cases, False, ["llama3-8b/decode/b1-ctx8k"], exact=True)] == [cases[0].name]
    assert [c.name for c in select(cases, True, None)] == [cases[0].name, cases[2].name]
    with pytest.raises(UsageError, match="no case named 'llama3-8b/decode'"):
        select(cases, False, ["llama3-8b/decode"], exact=True)
    with pytest.raises(UsageError, match=r"no case whose name contains 'fp8kv' \(in the --quick catalogue\)"):
        select(cases, True, ["fp8kv"])


# --------------------------------------------------------------------------------------------------- check

def test_check_k_that_selects_nothing(capsys):
    rc, out, err = _main(capsys, "check", "-k", "no-such-case")
    assert rc == 2 and out == ""
    assert _one_line(err) == ("servekernels check: -k no-such-case: no case whose name contains 'no-such-case' "
                              "(servekernels check --list)")
    rc, out, err = _main(capsys, "check", "--exact", "-k", "write_kv")
    assert rc == 2 and _one_line(err).startswith("servekernels check: -k write_kv: no case named 'write_kv'")


def test_check_exact_selects_one_case(capsys):
    rc, out, _ = _main(capsys, "check", "--list", "-k", "llama3-8b/write-kv-fp8-scaled", "--exact")
    assert rc == 0 and out.splitlines() == ["llama3-8b/write-kv-fp8-scaled"]


def test_check_table_stays_aligned_with_long_names(capsys, monkeypatch):
    import servekernels.check as check

    long_case = "a-catalogue-entry-whose-name-is-much-longer-than-the-default-column"

    def results(name, op, dtype, ok):
        return lambda: [Result(name, op, dtype, 1.5e-3, 2e-3, 1e-4, 0.1, "" if ok else "differs")]

    fake = [Case("short", results("short", "out", "bfloat16", True)),
            Case(long_case, results(long_case, "an-op-named-at-length", "bfloat16->float8_e4m3fn", False))]
    monkeypatch.setattr(check, "collect", lambda *args, **kwargs: fake)
    rc, out, _ = _main(capsys, "check")
    assert rc == 1
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    table = [lines[header]] + lines[header + 2:header + 4]
    # every numeric column and the pass column start at the same offset in the header and in each row
    starts = [table[0].index("pass")]
    starts += [row.index("PASS") if "PASS" in row else row.index("FAIL") for row in table[1:]]
    assert len(set(starts)) == 1, table
    err_ends = [table[0].index("worst err") + len("worst err")] + [row.index("1.500e-03") + 9 for row in table[1:]]
    assert len(set(err_ends)) == 1, table


# ---------------------------------------------------------------------------------------------- help texts

def test_help_imports_neither_torch_nor_triton():
    code = ("import contextlib, io, sys\n"
            "from servekernels import cli\n"
            "for argv in [['--help']] + [[c, '--help'] for c in cli.COMMANDS]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        assert cli.main(argv) == 0, argv\n"
            "    assert 'usage: servekernels' in out.getvalue(), argv\n"
            "print(sorted(m for m in ('torch', 'triton') if m in sys.modules))\n")
    proc = _subprocess(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_option_has_help_text():
    import argparse

    for name in cli.COMMANDS:
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for action in sub._actions:
            assert action.help, f"servekernels {name} {action.option_strings or action.dest}: no help text"


def test_a_missing_command_module_is_an_error(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "check", ("servekernels.no_such_module", "gone"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["check", "--list"])


# ------------------------------------------------------------------------------------------ error_summary

def test_error_summary_without_or_with_bad_arguments(tmp_path, capsys):
    from correctness import error_summary

    assert error_summary.main([]) == 2
    assert _one_line(capsys.readouterr().err).startswith("usage: python -m correctness.error_summary LOG.jsonl")
    assert error_summary.main(["a", "b"]) == 2
    _one_line(capsys.readouterr().err)
    missing = tmp_path / "none.jsonl"
    assert error_summary.main([str(missing)]) == 2
    assert _one_line(capsys.readouterr().err) == f"error_summary: {missing}: cannot read it (No such file or directory)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"test": "correctness/test_x.py::t", "dtype": "float16", "max_abs_err": 0.1,
                               "max_rel_err": 0.01, "atol_max": 1.0}) + "\nnot json\n")
    assert error_summary.main([str(bad)]) == 2
    assert _one_line(capsys.readouterr().err).startswith(f"error_summary: {bad}:2: not a SERVEKERNELS_ERROR_LOG record")


def test_error_summary_as_a_module_without_arguments():
    proc = subprocess.run([sys.executable, "-m", "correctness.error_summary"], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert _one_line(proc.stderr).startswith("usage: python -m correctness.error_summary")


# ------------------------------------------------------------------------------------------ configure_triton

def test_configure_triton_after_triton_was_imported_is_a_one_line_value_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, so the interpreter is needed
    code = ("import triton\n"
            "from kernels.runtime import configure_triton\n"
            "try:\n"
            "    configure_triton()\n"
            "except ValueError as exc:\n"
            "    print(exc)\n")
    proc = _subprocess(code, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "configure_triton(): called after triton was imported, too late to switch on the interpreter; call it "
        "before importing triton (or set TRITON_INTERPRET=1)"]
    control = _subprocess("from kernels.runtime import configure_triton\nprint(configure_triton())\n", env)
    assert control.stdout.strip() == "interpreter", control.stderr
