"""A verdict never depends on the name of the folder the checkout lives in.

pytest's ``item.keywords`` holds the names of the directories above a test, the checkout's root included, so a
rule written as ``"servekernels" in item.keywords`` skipped every parity test of a wrong kernel in a checkout
named ``servekernels`` (and ``"gpu" in item.keywords`` every test in one named ``gpu``). The rules now ask
markers (``get_closest_marker``) and paths relative to the rootdir. This test copies the tracked tree into
folders named like the project's markers and folders and requires every selection's outcome there to equal its
outcome in a neutral folder.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only("runs pytest in copies of the checkout; the selections judge float64 wrong "
                                   "modules and host-only tests (no kernel launch)")

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("servekernels", "gpu", "peer", "correctness")
# A wrong module's parity tests (skipped as "about servekernels' own kernels" in a checkout named `servekernels`,
# as "needs a CUDA GPU" in one named `gpu`) and non-parity tests under --impl (skipped by a path rule).
SELECTION = ["--impl", "correctness.wrong_impls.base2_lse", "correctness/test_merge_states.py",
             "correctness/test_route.py", "correctness/test_markers.py"]
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)")


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and src.suffix != ".png":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _outcome(checkout: Path) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          *SELECTION], cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    counts = {kind: int(n) for n, kind in SUMMARY.findall(last)}
    assert counts, f"no pytest summary in {checkout.name}/: {last}"
    return counts


@pytest.fixture(scope="module")
def neutral(tmp_path_factory):
    checkout = tmp_path_factory.mktemp("neutral") / "neutral-name"
    _tracked_copy(checkout)
    counts = _outcome(checkout)
    assert counts.get("failed", 0) > 0 and counts.get("passed", 0) > 0, (
        f"in a neutral folder the wrong module must fail some parity tests and pass others: {counts}")
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_outcome_does_not_depend_on_the_checkout_name(neutral, tmp_path, name):
    checkout = tmp_path / name
    _tracked_copy(checkout)
    got = _outcome(checkout)
    assert got == neutral, f"a checkout named {name!r} gives {got}, a neutral one {neutral}"


def test_no_rule_reads_keywords_as_markers():
    """``item.keywords`` / ``node.keywords`` mix markers with folder names: markers are asked for by name."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part in ("build", "reports") for part in path.relative_to(ROOT).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if re.search(r"\b(item|node|pyfuncitem|request\.node)\.keywords\b", line) and path != Path(__file__):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
