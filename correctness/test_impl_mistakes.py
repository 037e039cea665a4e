"""A user module that cannot be judged is one line naming the module and the problem, before any case runs.

Each module here is what a user might pass with ``--impl``, written to ``tmp_path``: a syntax error, an import
that fails, an exception at import time, a missing ``module:attr``, a function that does not take the
contract's positional arguments, one that lacks a contract keyword, one that requires an argument the contract
does not pass. ``kernels.impls.load`` raises one ``ValueError`` line; ``servekernels check`` and ``servekernels
report`` print it and exit 2; ``python -m pytest --impl`` stops with a usage error (no INTERNALERROR, no
traceback). A right module, and one declining the feature whose keyword it lacks, load.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kernels.impls import load
from servekernels.cli import main

pytestmark = pytest.mark.host_only("loads user modules and runs the CLIs up to their usage check: no kernel runs")

RIGHT_MERGE = "def merge_states(outs, lses):\n    return outs[0], lses[0]\n"
MISTAKES = {  # name -> (module source, --impl target suffix, what the one line must say)
    "syntax": ("def merge_states(outs, lses:\n    return outs\n", "", "does not import: SyntaxError"),
    "imports": ("import not_a_module_anyone_has\n" + RIGHT_MERGE, "",
                "does not import: ModuleNotFoundError: No module named 'not_a_module_anyone_has'"),
    "raises": ("raise RuntimeError('no GPU found\\nsecond line')\n", "", "does not import: RuntimeError: no GPU found"),
    "attr": (RIGHT_MERGE, ":kernels", "has no attribute 'kernels'"),
    "positional": ("def paged_decode(q, k_cache, v_cache, block_table, *, scale=None, **kw):\n    return q\n", "",
                   "does not take the contract's arguments: too many positional arguments"),
    "keyword": ("def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, softcap=None,\n"
                "                 sliding_window=None, k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None,\n"
                "                 return_lse=False, batch_invariant=False):\n    return q\n", "",
                "does not take the contract's arguments: no keyword soft_cap"),
    "required": ("def merge_states(outs, lses, num_heads):\n    return outs\n", "",
                 "missing a required argument: 'num_heads'"),
}


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``source`` as a fresh module (a name no other test imports) on ``sys.path``; yields its writer."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        module = f"servekernels_user_{name}_{os.getpid()}"
        (tmp_path / f"{module}.py").write_text(source)
        written.append(module)
        return module

    yield write
    for module in written:
        sys.modules.pop(module, None)


def _one_line(text: str, module: str, says: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert module in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in text


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_load_says_what_is_wrong_in_one_line(user_module, mistake):
    source, suffix, says = MISTAKES[mistake]
    module = user_module(mistake, source)
    with pytest.raises(ValueError) as info:
        load(module + suffix)
    _one_line(str(info.value), module, says)


@pytest.mark.parametrize("command", ["check", "report"])
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_check_and_report_exit_2_with_one_line(user_module, mistake, command, capsys, tmp_path):
    source, suffix, says = MISTAKES[mistake]
    module = user_module(mistake, source)
    extra = ["--out", str(tmp_path / "report"), "-k", "merge"] if command == "report" else []
    assert main([command, "--impl", module + suffix, *extra]) == 2
    out, err = capsys.readouterr()
    assert not out
    _one_line(err, module, says)
    assert err.startswith(f"servekernels {command}: --impl {module}")


@pytest.mark.parametrize("mistake", ["syntax", "attr", "keyword"])
def test_pytest_stops_with_a_usage_error(user_module, mistake, tmp_path):
    source, suffix, says = MISTAKES[mistake]
    module = user_module(mistake, source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), str(tmp_path)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "--impl", module + suffix, "correctness/test_merge_states.py"],
                          capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, text
    assert "INTERNALERROR" not in text
    _one_line(text, module, says)
    assert text.strip().startswith(f"ERROR: --impl {module}")


def test_a_right_module_loads_and_a_declined_keyword_may_be_missing(user_module):
    right = user_module("right", RIGHT_MERGE)
    assert load(right).provides("merge_states")
    declined = user_module("declines", textwrap.dedent("""
        SERVEKERNELS_UNSUPPORTED = {"paged_decode": {"soft_cap": "not implemented", "return_lse": "out only"}}

        def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, sliding_window=None,
                         k_scale=1.0, v_scale=1.0, num_splits=None, split_size=None, batch_invariant=False):
            return q
        """))
    assert load(declined).provides("paged_decode")
