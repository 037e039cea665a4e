"""The baseline providers' timing setups (``Provider.timers``: ``kernels/impls/vllm/<op>.py``,
``kernels/impls/torch_sdpa.py``) compute the op they are timed as.

The harness times the ``Launch`` a provider's ``timed`` returns and checks ``postprocess`` of its last output;
here the same steps run on CPU tensors (vLLM's kernels under the interpreter, SDPA on the CPU) and the result is
held to the float64 reference with the derived tolerance. Device timing itself needs a GPU: ``measure_provider``
must refuse cleanly here (``GpuUnavailable``), never report a number.
"""
from __future__ import annotations

import pytest
import torch

from kernels.impls import baselines, load
from kernels.impls import vllm as V
from kernels.impls.torch_sdpa import PROVIDER as SDPA
from kernels.testing.assertions import assert_close
from kernels.testing.paged import make_paged_batch
from kernels.testing.tolerances import attention_out_atol, lse_atol
from kernels import reference as R
from perf import harness

pytestmark = pytest.mark.interpreter("the baseline providers on host tensors (vLLM\x27s kernels under the interpreter, SDPA on the CPU); timing must refuse without a GPU")

_REASON = V.unavailable_reason()
VLLM = V.PROVIDER


def run_provider(op: str, provider, args: tuple, kwargs: dict | None = None):
    """What the harness times and checks, without the timing."""
    call = harness.timed_call(op, provider, args, kwargs)
    out = call.fn()
    return call.postprocess(out) if call.postprocess else out


def test_baselines_are_the_providers_with_timing_setups():
    assert load("torch_sdpa") is SDPA and load("vllm") is VLLM  # one registry: the objects the harness times
    for op in ("paged_prefill", "paged_decode"):
        found, notes = baselines(op)
        assert SDPA in found
        assert (VLLM in found) is (_REASON is None) and notes == ([] if _REASON is None else [_REASON])
    for op in ("merge_states", "fused_moe"):
        found, _ = baselines(op)
        assert SDPA not in found and (VLLM in found) is (_REASON is None)
    assert not load("servekernels").baseline and not load("torch").baseline
    assert baselines("write_kv")[0] == []  # no baseline times write_kv


@pytest.mark.parametrize("op", ["paged_decode", "paged_prefill"])
def test_sdpa_provider_matches_reference(op):
    lens = [40, 40, 40]
    b = make_paged_batch(lens, None if op == "paged_decode" else lens, num_q_heads=8, num_kv_heads=2, head_dim=64,
                         block_size=16, dtype="float32", seed=21)
    args = b.decode_args() if op == "paged_decode" else b.prefill_args()
    out = run_provider(op, SDPA, args, b.kwargs)
    ref = getattr(R, op)(*args, **b.kwargs)
    assert_close(out, ref, atol=attention_out_atol("float32", b.v_max()), name=f"torch_sdpa {op}")


@pytest.mark.parametrize("bad,arg", [
    (dict(seq_lens=[40, 41]), "seq_lens"),
    (dict(sliding_window=8), "sliding_window"),
    (dict(soft_cap=30.0), "soft_cap"),
    (dict(kv_dtype="float8_e4m3fn"), "k_cache"),
    (dict(q_lens=[40, 7]), "query_start_loc"),
])
def test_sdpa_provider_refuses_other_math(bad, arg):
    """Where SDPA would compute something else (ragged, windowed, capped, fp8, chunked), setup says so."""
    bad = dict(bad)
    lens = bad.pop("seq_lens", [40, 40])
    q_lens = bad.pop("q_lens", lens)
    b = make_paged_batch(lens, q_lens, num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, seed=22, **bad)
    with pytest.raises(ValueError, match=arg):
        run_provider("paged_prefill", SDPA, b.prefill_args(), b.kwargs)


@pytest.mark.peer
@pytest.mark.skipif(_REASON is not None, reason=f"peer tests: {_REASON}")
@pytest.mark.parametrize("op", ["paged_decode", "paged_prefill"])
def test_vllm_attention_provider(op):
    lens, q_lens = [33, 1, 90], [5, 1, 30]
    b = make_paged_batch(lens, None if op == "paged_decode" else q_lens, num_q_heads=4, num_kv_heads=1,
                         head_dim=64, block_size=16, seed=23)
    args = b.decode_args() if op == "paged_decode" else b.prefill_args()
    out = run_provider(op, VLLM, args, b.kwargs)
    assert_close(out, getattr(R, op)(*args, **b.kwargs), atol=attention_out_atol("float16", b.v_max()),
                 name=f"vllm_triton {op}")


@pytest.mark.peer
@pytest.mark.skipif(_REASON is not None, reason=f"peer tests: {_REASON}")
def test_vllm_merge_provider():
    outs = torch.randn(3, 9, 4, 64)
    lses = torch.randn(3, 9, 4) * 4
    lses[1, 2, 3] = float("-inf")
    out, lse = run_provider("merge_states", VLLM, (outs, lses))
    ref_out, ref_lse = R.merge_states(outs, lses)
    assert_close(out, ref_out, atol=attention_out_atol("float32", float(outs.abs().max())), name="out")
    assert_close(lse, ref_lse, atol=lse_atol("float32", float(lses[torch.isfinite(lses)].abs().max())), name="lse")


@pytest.mark.peer
@pytest.mark.skipif(_REASON is not None, reason=f"peer tests: {_REASON}")
def test_vllm_moe_provider():
    from correctness.test_peer_vllm_moe import make_moe, vllm_error_bound

    x, w13, w2, ids, weights = make_moe(9, 128, 64, 4, 2, "float16", "dense", seed=3)
    call = harness.timed_call("fused_moe", VLLM, (x, w13, w2, ids, weights))
    assert "untimed" in V.moe_note(call.state)  # the CPU wheel: alignment in setup, torch activation and sum
    out = call.fn()
    bound = vllm_error_bound(x, w13, w2, ids, weights, "dense")
    ref = R.fused_moe(x, w13, w2, ids, weights)
    assert_close(out.double().numpy() / bound, ref / bound, atol=1.0, name="vllm_triton fused_moe (units of bound)")


def test_timing_refuses_without_gpu():
    from kernels.runtime import cuda_available, interpreter_enabled

    if cuda_available() and not interpreter_enabled():
        pytest.skip("a GPU is here: the harness's own GPU tests time the providers")
    b = make_paged_batch([16, 16], num_q_heads=2, num_kv_heads=1, head_dim=32, block_size=16, seed=24)
    with pytest.raises(harness.GpuUnavailable):
        harness.measure_provider("paged_decode", SDPA, b.decode_args(), b.kwargs, policy=harness.QUICK_POLICY)


def test_sdpa_functions_give_the_timed_result_and_decline_other_math():
    """Judged by ``check``/pytest (``--impl torch_sdpa``), the same math: the timed call's output where SDPA
    applies, ``Unsupported`` with the setup's reason where it would compute something else."""
    from kernels.impls import Unsupported

    b = make_paged_batch([24, 24], None, num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype="float32",
                         seed=25)
    fn = SDPA.op("paged_decode")
    assert torch.equal(fn(*b.decode_args(), **b.kwargs), run_provider("paged_decode", SDPA, b.decode_args(), b.kwargs))
    with pytest.raises(Unsupported, match="return_lse"):
        fn(*b.decode_args(), **b.kwargs, return_lse=True)
    ragged = make_paged_batch([24, 9], None, num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, seed=26)
    with pytest.raises(Unsupported, match="seq_lens"):
        fn(*ragged.decode_args(), **ragged.kwargs)
