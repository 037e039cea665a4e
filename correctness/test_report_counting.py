"""Counting is not parity: a Triton the hooks cannot patch, or a hook that breaks, loses the counted column only.

CPU-only: the counting hooks patch Triton's interpreter (a GPU run counts in an interpreter subprocess).
"""
from __future__ import annotations

import json

import pytest
import torch
import triton

from kernels.runtime import interpreter_enabled
from roofline import counting, report

from correctness.test_counting import _scale_copy
from correctness.test_report import _run, tiny_catalogue

pytestmark = [pytest.mark.skipif(not interpreter_enabled(), reason="counting hooks patch the Triton interpreter"),
              pytest.mark.interpreter("counting hooks patch the Triton interpreter: CPU tensors")]


@pytest.fixture
def decode_and_merge(monkeypatch):
    monkeypatch.setattr(report, "catalogue", lambda: [c for c in tiny_catalogue() if c.op != "grouped_gemm"])


def _rows(tmp_path) -> dict:
    return {r["case"]: r for r in json.loads((tmp_path / "report.json").read_text())["rows"]}


def test_a_triton_the_hooks_cannot_patch_is_not_counted_and_parity_still_runs(decode_and_merge, tmp_path,
                                                                              monkeypatch):
    def unpatchable(interp):
        raise counting.CountingUnavailable("triton 0.0: the interpreter has no create_masked_load")

    monkeypatch.setattr(counting, "_patch_targets", unpatchable)
    assert _run(tmp_path) == 0  # exit code unaffected
    rows = _rows(tmp_path)
    for r in rows.values():
        assert r["parity"] == "pass" and r["max_rel_err"] is not None  # the kernel ran uncounted and was checked
        assert r["bytes_counted"] is None
        assert r["counting"] == "not counted: triton 0.0: the interpreter has no create_masked_load"
    md = (tmp_path / "report.md").read_text()
    assert md.count("not counted: triton 0.0") == len(rows)  # in the counted column, every row still there
    assert not counting._active  # nothing left pushed: the next count works
    monkeypatch.undo()
    with counting.count_traffic():
        pass


def test_a_hook_that_breaks_mid_run_loses_only_the_count(decode_and_merge, tmp_path, monkeypatch):
    def broken(self, *args):
        raise AttributeError("'tensor' object has no attribute 'data'")

    monkeypatch.setattr(counting.TrafficCounter, "_record", broken)
    assert _run(tmp_path, "-k", "merge") == 0
    (row,) = _rows(tmp_path).values()
    assert row["parity"] == "pass" and row["bytes_counted"] is None
    assert row["counting"].startswith("not counted: create_masked_") and "no attribute 'data'" in row["counting"]


def test_a_kernel_that_crashes_is_still_a_parity_failure(decode_and_merge, tmp_path, monkeypatch):
    """Positive control for the two above: the retry uncounted must not hide a kernel that is really broken."""
    import kernels.triton.ops.merge_states as merge

    def crashes(*args, **kwargs):
        raise IndexError("kernel blew up")

    monkeypatch.setattr(merge, "merge_states", crashes)  # the op spec's kernel (kernels/ops/merge_states.py)
    assert _run(tmp_path, "-k", "merge") == 1
    (row,) = _rows(tmp_path).values()
    assert row["parity"] == "FAIL" and "kernel blew up" in row["status"]


def test_counting_works_without_the_methods_older_tritons_lack(monkeypatch):
    """triton 3.6/3.7 have no ``create_atomic_load/store``: counting must not need them (the old code looked them
    up after registering the counter, failed, and every later count said "already counting")."""
    from triton.runtime import interpreter as interp

    for name in ("create_atomic_load", "create_atomic_store"):
        if hasattr(interp.InterpreterBuilder, name):
            monkeypatch.delattr(interp.InterpreterBuilder, name)
    x = torch.randn(100, dtype=torch.float16)
    y = torch.empty_like(x)
    for _ in range(2):  # the second block would fail if the first left state behind
        with counting.count_traffic() as c:
            _scale_copy[(triton.cdiv(100, 32),)](x, y, 100, BLOCK=32)
        assert c.failure is None and c.load_bytes == 200 and c.store_bytes == 200
    torch.testing.assert_close(y, x * 2)


def test_hooks_find_pointer_and_mask_by_name_in_any_parameter_order():
    """3.6/3.7 take ``(self, ptrs, mask, other, cache_modifier, eviction_policy, is_volatile)``, 3.9
    ``(self, ptrs, mask, other, cache_policy, is_volatile)``: the hook reads ``ptrs``/``mask`` by name, so a
    made-up order counts the same, positionally or by keyword, and the original still gets every argument."""
    import numpy as np
    from types import SimpleNamespace

    calls = []

    def made_up(self, mask, other, ptrs, cache_modifier=None):
        calls.append((mask, other, ptrs, cache_modifier))
        return "loaded"

    counter = counting.TrafficCounter()
    hooked = counting._hook(counter, "create_masked_load", made_up)
    assert counting._parameters(hooked) == ["self", "mask", "other", "ptrs", "cache_modifier"]
    ptrs = SimpleNamespace(data=np.array([0, 4, 8, 12]), get_element_ty=lambda: SimpleNamespace(primitive_bitwidth=32))
    mask = SimpleNamespace(data=np.array([True, True, False, True]))
    assert hooked(None, mask, 0.0, ptrs, "cg") == "loaded"
    assert hooked(None, mask=mask, other=0.0, ptrs=ptrs) == "loaded"
    assert calls == [(mask, 0.0, ptrs, "cg"), (mask, 0.0, ptrs, None)]
    assert counter.failure is None and counter.load_bytes == 2 * 3 * 4  # 3 enabled lanes of 4 bytes, twice


def test_a_builder_without_a_pointer_parameter_is_refused_before_patching(monkeypatch):
    from triton.runtime import interpreter as interp

    monkeypatch.setattr(interp.InterpreterBuilder, "create_masked_store", lambda self, address, value, mask, *r: 0)
    before = interp.GridExecutor.__call__
    with pytest.raises(counting.CountingUnavailable, match="create_masked_store.*no pointer parameter"):
        with counting.count_traffic():
            pass
    assert interp.GridExecutor.__call__ is before and not counting._active


@pytest.mark.parametrize("full", ["pass", "FAIL"])
def test_measured_full_size_parity_fills_the_parity_column(decode_and_merge, monkeypatch, full):
    """On a GPU the full-size check after timing is a verdict: with ``--no-count`` it is the only one, and the
    report must not say "not checked" (here ``measure_case`` stands in for the CUDA timing)."""
    from roofline.specs import get_spec

    def measured(case, policy, peers=True, provider=None, seed=0):  # 12.5 ms: above every case's memory floor
        return {"t_measured_us": 12500.0, "parity_full": full, "max_rel_err_full": 2e-3}

    monkeypatch.setattr(report, "measure_case", measured)
    doc, _, _ = report.build(report.catalogue(), get_spec("h200"), measured=True, quick=True, count=False)
    for r in doc["rows"]:
        assert r["parity"] == full and r["max_rel_err"] == 2e-3 and r["parity_at"] == "full size"
        assert r["t_measured_us"] == 12500.0 and r["pct_of_roof"] > 0
    assert doc["parity_note"] == "parity checked at full size after timing"
    doc, _, _ = report.build(report.catalogue(), get_spec("h200"), measured=False, quick=True, count=False)
    assert doc["parity_note"] == "parity not checked (--no-count, no GPU)"
    assert {r["parity"] for r in doc["rows"]} == {"not checked"}
