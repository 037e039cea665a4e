"""The device rule (root ``conftest.py``): every test under ``correctness/`` and ``perf/`` takes the ``device``
fixture (directly or through a fixture that depends on it) or says why not (``host_only(reason)``,
``interpreter(reason)``, ``gpu``); collection fails listing the others. Run on tiny temp suites in a subprocess
with this repo's ``conftest.py`` and ``pyproject.toml``."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only("pytest on a temp suite in a subprocess: no kernel")

ROOT = Path(__file__).resolve().parents[1]

GOOD = '''
import pytest

@pytest.fixture
def built(device):
    return device

def test_takes_device(device):
    assert device

def test_through_a_fixture(built):
    assert built

@pytest.mark.host_only("arithmetic only")
def test_host_only():
    pass

@pytest.mark.interpreter("counts under the interpreter")
def test_interpreter():
    pass

@pytest.mark.gpu
def test_gpu():
    pass
'''

BAD = GOOD + '''
def test_unmarked():
    pass

@pytest.mark.host_only("")
def test_empty_reason():
    pass
'''


def _suite(tmp_path: Path, body: str, where: str = "correctness") -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / where).mkdir()
    (tmp_path / where / "test_tiny.py").write_text(body)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", where],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_an_unmarked_test_fails_collection_and_is_listed(tmp_path):
    proc = _suite(tmp_path, BAD)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # a usage error: nothing ran
    assert "1 test(s) neither take the `device` fixture nor say why not" in out, out
    assert "correctness/test_tiny.py::test_unmarked" in out
    assert "correctness/test_tiny.py::test_empty_reason (host_only without a reason)" in out
    for fine in ("test_takes_device", "test_through_a_fixture", "test_host_only", "test_interpreter", "test_gpu"):
        assert f"test_tiny.py::{fine}" not in out, fine


def test_marked_or_device_tests_collect_and_run(tmp_path):
    """The control: the same suite without the two offenders runs (the gpu test skips without one)."""
    proc = _suite(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed, 1 skipped" in proc.stdout or "5 passed" in proc.stdout, proc.stdout


def test_the_rule_covers_perf_too(tmp_path):
    proc = _suite(tmp_path, BAD, where="perf")
    assert proc.returncode == 4 and "perf/test_tiny.py::test_unmarked" in proc.stdout + proc.stderr
