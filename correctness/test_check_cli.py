"""``servekernels check`` reports per case: a crashing case is a FAIL row with its reason, the rest still run.

The meta-device run: ``check``'s cases with ``meta`` standing in for CUDA up to the first kernel launch, so a
host tensor handed to a device launch (or to a reference next to device tensors) fails on this CPU.
"""
from __future__ import annotations

import pytest
import torch

from servekernels import check

pytestmark = pytest.mark.host_only("check's table with stub cases; the meta-device tests build on meta themselves and stop before any launch")


def _passing(name):
    def run():
        return [check.compare(name, "out", "float32", torch.ones(3), torch.ones(3), 1e-6, 0.0)]

    return check.Case(name, run)


def _crashing():
    raise ValueError("slot_mapping: on cpu, the caches on cuda:0\nsecond line of the message")


def test_a_crashing_case_is_a_fail_row_and_later_cases_still_run(monkeypatch, capsys):
    from servekernels.cli import main

    cases = [_passing("first"), check.Case("crashes", _crashing), _passing("after")]
    monkeypatch.setattr(check, "collect", lambda *args, **kwargs: cases)
    assert main(["check"]) == 1
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out if line.split() and line.split()[0] in ("first", "crashes", "after")}
    assert "FAIL" in rows["crashes"].split() and "crashed" in rows["crashes"].split()
    assert rows["crashes"].endswith("ValueError: slot_mapping: on cpu, the caches on cuda:0")  # its one-line reason
    assert "second line" not in rows["crashes"]  # one line per case
    assert "PASS" in rows["first"].split() and "PASS" in rows["after"].split()  # the case after it ran
    assert out[-2] == "1 failed" and out[-1] == "replay: servekernels check --seed 0 --impl servekernels -k crashes"


class _Launched(Exception):
    """Raised by the launch recorder: the case got as far as a kernel launch with consistent devices."""


def _stop_at_launch(name):
    """A stand-in for op ``name``'s kernel: checks every tensor it is handed is on the meta device, then stops."""
    def launch(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        tensors += [t for a in (*args, *kwargs.values()) if isinstance(a, (list, tuple)) for t in a
                    if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        assert devices == {"meta"}, f"{name} launched with tensors on {sorted(devices)}: a device mix on a GPU"
        raise _Launched(name)

    return launch


def test_check_cases_reach_their_first_launch_on_the_meta_device(monkeypatch):
    """Every check case builds its inputs on the device ``default_device()`` names; with "meta" there, any tensor
    made on the host and handed to a launcher fails here, as it would on a GPU (the write_kv case did)."""
    import kernels.runtime
    from kernels.impls.servekernels import PROVIDER
    from kernels.ops import registry

    monkeypatch.setattr(kernels.runtime, "default_device", lambda: "meta")
    monkeypatch.setattr(PROVIDER, "functions", _stop_at_launch)
    cases = check.collect()  # the check shapes, then one drawn shape per op
    specs = registry().values()
    assert len(cases) == sum(len(spec.check) + (spec.draw is not None) for spec in specs) >= 10
    for case in cases:
        with pytest.raises(_Launched):
            case.run()


def test_the_meta_run_catches_a_host_tensor_handed_to_a_launch(monkeypatch):
    """Positive control: a case that builds one input on the host (what the old write_kv case did with its
    slot_mapping) fails the meta run instead of reaching the launch."""
    import kernels.triton as kt

    monkeypatch.setattr(kt, "write_kv", _stop_at_launch("write_kv"), raising=False)
    cache = torch.empty((4, 16, 2, 8), device="meta")
    key = torch.empty((3, 2, 8), device="meta")
    with pytest.raises(AssertionError, match=r"write_kv launched with tensors on \['cpu', 'meta'\]"):
        kt.write_kv(key, key, cache, cache, torch.zeros(3, dtype=torch.int64))
