"""The meta-device run: the report's case builders, and ``--meta`` itself (``correctness/meta_run.py``).

Every report catalogue case builds its inputs on the ``meta`` device (standing in for CUDA) through the report's
own entry (``roofline.ops.prepare``) and reaches the implementation's launch with meta tensors only: at the
counted (scaled-down) shape and at the full shape for every case (full-size weight stacks are drawn on the
device, ``kernels.testing.moe_inputs.master_weights``: on meta that is shapes only). A builder that makes one tensor on the host fails, as it would on a
GPU. Then ``python -m pytest --meta`` on a tiny temp suite: a test whose inputs reach the launch on meta passes,
one that builds a tensor on the host fails, host-only tests are deselected and counted.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from correctness.meta_run import ReachedFirstLaunch, stopping
from roofline.catalogue import catalogue

pytestmark = pytest.mark.host_only("builds on the meta device itself and stops before any launch")

ROOT = Path(__file__).resolve().parents[1]
# the full-size builds make model-sized inputs (a sampler's [256, 262144] logits and noise, MLA's 32k-token
# caches): up to tens of seconds each here, so the default tier runs the counted
# (small) shape of every case and CI's slow leg the full one
CASES = [pytest.param(c, size, id=f"{label}-{c.name}", marks=[pytest.mark.slow] if label == "full" else [])
         for c in catalogue() for size, label in (("small", "small"), ("shape", "full"))]


@pytest.fixture
def stopped():
    """The servekernels provider with every op replaced by the meta checker (``stop_at_launch``), passed to
    ``prepare`` as the object it takes (no patching of a loader some module may have bound already)."""
    from kernels.impls import load

    return stopping(load("servekernels"))


@pytest.mark.parametrize("case, size", CASES)
def test_report_case_reaches_its_first_launch_on_the_meta_device(case, size, stopped):
    from roofline.ops import prepare

    prepared = prepare(case.op, getattr(case, size), "meta", seed=0, provider=stopped)
    with pytest.raises(ReachedFirstLaunch):
        prepared.run()


def test_every_op_of_the_catalogue_is_covered_at_some_size():
    from kernels.ops import registry

    assert {c.values[0].op for c in CASES} == set(registry())


def test_a_builder_with_one_host_tensor_fails_the_meta_run(monkeypatch, stopped):
    """Positive control: the write_kv builder with its slot mapping made on the host (``torch.zeros(n)`` without
    ``device=``, what the old write_kv check case did) fails instead of reaching the launch."""
    import kernels.ops as ops
    import roofline.ops
    from roofline.ops import prepare

    spec = ops.get("write_kv")

    def host_slots(shape, device="cpu", seed=0):
        inputs = spec.build(shape, device, seed)
        args = list(inputs.args)
        args[4] = torch.zeros(args[4].shape, dtype=args[4].dtype)  # slot_mapping on the host
        return dataclasses.replace(inputs, args=tuple(args))

    bad = dataclasses.replace(spec, build=host_slots)
    monkeypatch.setattr(roofline.ops, "get", lambda name: bad if name == "write_kv" else spec)  # prepare's lookup
    case = next(c for c in catalogue() if c.op == "write_kv")
    prepared = prepare("write_kv", case.small, "meta", seed=0, provider=stopped)
    with pytest.raises(AssertionError, match=r"write_kv launched with tensors on \['cpu', 'meta'\]"):
        prepared.run()


SUITE = '''
import pytest
import torch

from correctness.impl import T


def test_reaches(device):
    x = torch.zeros(4, 2, 8, device=device)
    T.merge_states(x[None].expand(2, 4, 2, 8), torch.zeros(2, 4, 2, device=device))


def test_host_tensor(device):
    x = torch.zeros(4, 2, 8, device=device)
    T.merge_states(x[None].expand(2, 4, 2, 8), torch.zeros(2, 4, 2))  # lses on the host


@pytest.mark.host_only("arithmetic only")
def test_host():
    pass


@pytest.mark.meta_unsupported("needs values", ids=("b",))
@pytest.mark.parametrize("p", ["a", "b"])
def test_partly(p, device):
    x = torch.zeros(4, 2, 8, device=device)
    T.merge_states(x[None].expand(2, 4, 2, 8), torch.zeros(2, 4, 2, device=device))
'''


def test_the_meta_option_passes_a_launch_fails_a_host_tensor_and_counts_what_it_deselects(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "correctness").mkdir()
    (tmp_path / "correctness" / "test_tiny.py").write_text(SUITE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--meta",
                           "-rA", "correctness"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "PASSED correctness/test_tiny.py::test_reaches" in out
    assert "PASSED correctness/test_tiny.py::test_partly[a]" in out
    assert "FAILED correctness/test_tiny.py::test_host_tensor" in out
    assert "merge_states launched with tensors on ['cpu', 'meta']" in out
    assert "2 passed by reaching their first launch with only meta tensors, 0 passed without a launch" in out
    assert "deselected: 1 host_only, 1 meta_unsupported" in out
