"""Run a test module's ``child(arg)`` in a fresh interpreter (``python -m MODULE ARG``) and return the JSON it
prints last. For the tests whose failure mode is a crash (a 32-bit offset overflow segfaults under the
interpreter) or whose claim is about the whole process (its peak resident memory), so neither can take the
test session down or be measured inside it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(module: str, arg: str, timeout: int = 600) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", module, arg], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (f"child exited with {proc.returncode} (a negative code is a signal: -11 is a "
                                  f"segfault from an overflowed offset)\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    import resource  # deferred: resource is POSIX-only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
