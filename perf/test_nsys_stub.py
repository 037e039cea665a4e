"""perf/nsys_profile.py against a stub ``nsys`` on the PATH: the commands it runs, in order, and its exit codes.

CPU-only by design: the stub stands in for Nsight Systems, and ``cuda_available`` is faked so the script gets
past its GPU check (the workload itself is what nsys would run on a GPU; it is not run here).
"""
from __future__ import annotations

import os
import sys
import types

import pytest

pytestmark = pytest.mark.host_only("nsys profiling against a stub nsys: no kernel")

STUB = """#!/bin/sh
echo "$@" >> "{log}"
exit {rc}
"""


@pytest.fixture
def stub_nsys(tmp_path, monkeypatch):
    import kernels.runtime

    def install(rc=0):
        log = tmp_path / "nsys.log"
        path = tmp_path / "bin" / "nsys"
        path.parent.mkdir(exist_ok=True)
        path.write_text(STUB.format(log=log, rc=rc))
        path.chmod(0o755)
        monkeypatch.setenv("PATH", f"{path.parent}{os.pathsep}{os.environ['PATH']}")
        return log

    monkeypatch.setattr(kernels.runtime, "cuda_available", lambda: True)
    if "nvtx" not in sys.modules:
        try:
            import nvtx  # noqa: F401  (part of the dev extra)
        except ImportError:  # an older environment without it: the script only checks it imports
            monkeypatch.setitem(sys.modules, "nvtx", types.ModuleType("nvtx"))
    return install


def test_profile_then_stats_with_nvtx_ranges(stub_nsys, tmp_path):
    from perf import nsys_profile

    log = stub_nsys()
    out = tmp_path / "prof"
    assert nsys_profile.main(["--out", str(out), "-k", "decode", "--iters", "3"]) == 0
    profile, stats = log.read_text().splitlines()
    rep = str(out / "servekernels")
    assert profile.startswith(f"profile -t cuda,nvtx -o {rep} --force-overwrite true {sys.executable} -m "
                              "perf.nsys_profile --workload --iters 3 -k decode")
    assert stats.split()[:3] == ["stats", "--report", "nvtx_sum,nvtx_gpu_proj_sum"]
    assert stats.endswith(rep + ".nsys-rep")


def test_a_failing_profile_stops_before_stats(stub_nsys, tmp_path, capsys):
    from perf import nsys_profile

    log = stub_nsys(rc=3)
    assert nsys_profile.main(["--out", str(tmp_path / "prof")]) == 1
    assert len(log.read_text().splitlines()) == 1  # profile only
    assert "nsys profile failed" in capsys.readouterr().err
