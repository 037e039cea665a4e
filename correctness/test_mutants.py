"""The mutation catalogue stays applicable, and the tool tells a killed mutant from a survivor.

The catalogue checks read sources only (milliseconds), so an edit that moves a snippet of
``correctness/mutant_catalogue.py`` fails here, in the default test command. The two end-to-end runs use
the pure-python block pool tests (seconds): one planted bug must be killed, one harmless edit must survive.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from correctness.mutant_catalogue import CATALOGUE, Mutant
from correctness.mutants import ROOT, apply_mutant, first_failure, module_name, run_mutant, sample, make_scratch

pytestmark = pytest.mark.host_only("sources of the mutation catalogue; the end-to-end runs mutate the pure-python block pool tests in a subprocess")

# files that hold logic a planted bug must be able to reach: every Triton kernel file and the engine's core
ENGINE_FILES = ["engine/block_pool.py", "engine/kv_cache_manager.py", "engine/scheduler.py", "engine/context.py"]


def kernel_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels" / "triton").rglob("*.py")
                  if "@triton.jit" in p.read_text())


def test_catalogue_has_at_least_40_uniquely_named_mutants():
    names = [m.name for m in CATALOGUE]
    assert len(names) >= 40
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", n) for n in names), names


@pytest.mark.parametrize("m", CATALOGUE, ids=lambda m: m.name)
def test_mutant_applies_once_and_still_compiles(m: Mutant):
    text = (ROOT / m.file).read_text()
    assert m.old != m.new and m.description
    mutated = apply_mutant(text, m)  # raises unless `old` occurs exactly once
    assert mutated != text
    compile(mutated, m.file, "exec")  # the mutated module is still valid Python
    for arg in m.tests:
        if not arg.startswith("-") and arg.startswith("correctness/"):
            assert (ROOT / arg.split("::")[0]).is_file(), f"{m.name}: no test file {arg}"
    assert any(a.startswith("correctness/") for a in m.tests), f"{m.name} names no test file"
    if m.equivalent is not None:
        assert len(m.equivalent) > 40, f"{m.name}: an equivalent mutant needs its argument written out"


def test_every_kernel_file_and_the_engine_are_covered():
    covered = {m.file for m in CATALOGUE if m.equivalent is None}
    missing = [f for f in kernel_files() + ENGINE_FILES if f not in covered]
    assert not missing, f"no non-equivalent mutant in {missing}"
    assert len(kernel_files()) >= 9  # the glob found the kernels (a moved directory must not pass vacuously)


def test_apply_refuses_a_snippet_that_is_missing_or_repeated():
    m = Mutant("x", "f.py", "a = 1", "a = 2", "d", ("correctness/test_mutants.py",))
    with pytest.raises(ValueError, match="occurs 0 times"):
        apply_mutant("b = 1\n", m)
    with pytest.raises(ValueError, match="occurs 2 times"):
        apply_mutant("a = 1\na = 1\n", m)
    assert apply_mutant("a = 1\n", m) == "a = 2\n"


def test_helpers():
    assert module_name("kernels/triton/ops/paged_prefill.py") == "kernels.triton.ops.paged_prefill"
    assert module_name("engine/__init__.py") == "engine"
    out = "....F\n=== short test summary info ===\nFAILED correctness/test_a.py::test_b[x] - AssertionError\n"
    assert first_failure(out) == "correctness/test_a.py::test_b[x]"
    picked = sample(CATALOGUE, 3, "abc")
    assert len(picked) == 3 and picked == sample(CATALOGUE, 3, "abc")
    assert all(m.equivalent is None and not m.slow for m in picked)
    assert len({tuple(m.name for m in sample(CATALOGUE, 3, str(seed))) for seed in range(10)}) > 1  # it rotates


@pytest.fixture(scope="module")
def scratch():
    import shutil

    path = make_scratch()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_planted_bug_is_killed_and_the_real_tree_is_untouched(scratch: Path):
    m = next(m for m in CATALOGUE if m.name == "engine-free-order")
    before = (ROOT / m.file).read_text()
    r = run_mutant(m, scratch, timeout=120)
    assert r.status == "killed", (r.status, r.detail)
    assert r.detail.startswith("correctness/test_engine_block_pool.py::"), r.detail
    assert (ROOT / m.file).read_text() == before  # the mutation happened in the scratch copy only
    assert (scratch / m.file).read_text() == before  # and was undone there


def test_a_harmless_edit_survives(scratch: Path):
    harmless = Mutant("harmless", "engine/block_pool.py", "Fixed-size KV blocks", "Fixed-size KV-cache blocks",
                      "a docstring edit", ("correctness/test_engine_block_pool.py", "-k", "null_block"))
    r = run_mutant(harmless, scratch, timeout=120)
    assert r.status == "survived", (r.status, r.detail)


def test_a_mutant_that_breaks_the_import_is_an_error_not_a_kill(scratch: Path):
    broken = Mutant("broken", "engine/block_pool.py", "import hashlib\n", "import hashlib_no_such_module\n",
                    "breaks the import", ("correctness/test_engine_block_pool.py",))
    r = run_mutant(broken, scratch, timeout=120)
    assert r.status == "error" and "does not import" in r.detail, (r.status, r.detail)
