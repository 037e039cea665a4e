"""A user implementation is judged on the contract, not on this project's extras.

It receives only the keywords of the contract's signature: a launcher extra (``num_sms``, ``validate``, ...)
reaches only a provider that declares it (``Provider.extras``: ours), so a parity test about one skips for a
user's module, saying which keyword, where it used to fail with a ``TypeError``. Input validation is declared:
``SERVEKERNELS_VALIDATES = False`` skips the bad-input tests (``@pytest.mark.bad_input``) with that reason, and
leaves every other test judging it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from kernels.impls import Unsupported, load

pytestmark = pytest.mark.host_only("loads providers and runs a parity selection on float64 references in a "
                                   "child process; no kernel of ours runs")

IDEAL = "correctness.ideal_impls.float64_out"
GEMM_ONLY = "from correctness.ideal_impls.float32 import grouped_gemm_int4  # noqa: F401\n"
ROUTE_IGNORES_RENORMALIZE = ("from kernels import torch_eager\n\n"
                             "SERVEKERNELS_UNSUPPORTED = {'route': {k: 'softmax only' for k in ('scoring', "
                             "'correction_bias', 'num_groups', 'topk_groups', 'routed_scaling_factor')}}\n\n\n"
                             "def route(router_logits, top_k, *, renormalize=True):\n"
                             "    return torch_eager.route(router_logits, top_k, renormalize=True)\n")
NO_CHECKS = ("from correctness.ideal_impls.float64_out import merge_states, paged_decode  # noqa: F401\n"
             "SERVEKERNELS_VALIDATES = False\n")


def test_an_extra_reaches_only_a_provider_that_declares_it():
    outs, lses = torch.zeros(2, 3, 4, 8), torch.zeros(2, 3, 4)
    with pytest.raises(Unsupported, match=r"^validate: not a keyword of the contract's merge_states"):
        load(IDEAL).op("merge_states")(outs, lses, validate=False)
    load(IDEAL).op("merge_states")(outs, lses)  # the contract's call goes through
    assert "validate" in load("servekernels").extras and not load(IDEAL).extras
    assert load("vllm").validates is False and load(IDEAL).validates is True


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """A parity selection for a module declaring ``SERVEKERNELS_VALIDATES = False`` and for one that does not."""
    path = tmp_path_factory.mktemp("user")
    (path / "servekernels_user_unchecked.py").write_text(NO_CHECKS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), str(path)]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
           "correctness/test_merge_states.py", "correctness/test_paged_decode.py", "--impl", IDEAL,
           "--impl", "servekernels_user_unchecked",
           "-k", "(bad_input and servekernels_user_unchecked) or (bad_input and num_sms) or test_merge_of_a_split"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _rows(proc, impl: str) -> dict[str, str]:
    """{test id: outcome and reason} for one implementation's items."""
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED) (?:\[\d+\] )?(\S+)(.*)", line)
        if m and impl in line:
            rows[m.group(2) + m.group(3)] = m.group(1)
    return rows


def test_validation_is_declared_and_extras_skip(parity):
    text = parity.stdout[-4000:] + parity.stderr[-2000:]
    assert parity.returncode == 0, text
    ideal, unchecked = _rows(parity, IDEAL), _rows(parity, "servekernels_user_unchecked")
    assert any(o == "PASSED" and "test_merge_of_a_split" in t for t, o in ideal.items()), text
    assert any(o == "PASSED" and "test_merge_of_a_split" in t for t, o in unchecked.items()), text  # the rest still runs
    skips = [line for line in parity.stdout.splitlines() if line.startswith("SKIPPED")]
    assert any("servekernels_user_unchecked declares it does not validate its inputs" in s for s in skips), text
    assert any("num_sms: not a keyword of the contract's paged_decode" in s for s in skips), text
    assert not any(o == "FAILED" for o in (*ideal.values(), *unchecked.values())), text


def test_every_public_name_is_judged(tmp_path):
    """A module with an int4 GEMM and no quantizer is judged on inputs the reference quantizer built (it used to
    skip: "quantize_int4 not provided"); a module's ``route`` is taken and judged: one that ignores
    ``renormalize`` fails."""
    (tmp_path / "servekernels_user_gemm_only.py").write_text(GEMM_ONLY)
    (tmp_path / "servekernels_user_route.py").write_text(ROUTE_IGNORES_RENORMALIZE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), str(tmp_path)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "correctness/test_grouped_gemm_int4.py", "correctness/test_route.py",
                           "--impl", "servekernels_user_gemm_only", "--impl", "servekernels_user_route",
                           "-k", "(test_grouped_gemm_int4.py and gemm_only and test_parity) or "
                                 "(test_route.py and servekernels_user_route)"],
                          capture_output=True, text=True, env=env, timeout=600)
    text = proc.stdout[-4000:] + proc.stderr[-2000:]
    gemm = _rows(proc, "servekernels_user_gemm_only")
    route = _rows(proc, "servekernels_user_route")
    assert gemm and all(o == "PASSED" for o in gemm.values()), text
    assert "quantize_int4 not provided" not in proc.stdout, text
    assert any(o == "FAILED" and "renormal" in t for t, o in route.items()), text
