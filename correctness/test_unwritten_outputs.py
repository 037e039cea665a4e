"""Outputs never written (a bug class seen in vLLM, FlashInfer and SGLang, 2025-2026): every allocation a
launcher of the implementation under test makes while it runs (its outputs and workspaces: split-KV partials, expert tile tables, permuted
buffers) is pre-filled with NaN (floats) or an out-of-range value (integers), so a row the kernel never writes,
or a workspace entry it reads before writing, shows up in the judged output. One check case per op, with empty
sequences, empty experts, skipped slots and empty partials where the op has them."""
from __future__ import annotations

import contextlib

import pytest
import torch

from correctness.impl import T
from kernels.ops import get, registry
from kernels.testing.judge import expected_outputs, judge


@contextlib.contextmanager
def poisoned_allocations():
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.is_floating_point():
            return t.fill_(float("nan"))
        if t.dtype == torch.bool:
            return t.fill_(True)
        return t.fill_(torch.iinfo(t.dtype).max)

    def poisoned_empty(*args, **kwargs):
        return fill(empty(*args, **kwargs))

    def poisoned_empty_like(*args, **kwargs):
        return fill(empty_like(*args, **kwargs))

    torch.empty, torch.empty_like = poisoned_empty, poisoned_empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


# the check case of each op with the most "nothing here" rows (empty sequences, empty experts, skipped slots)
CASES = {
    "paged_decode": "qwen2.5-7b/decode-ragged",  # a sequence of length 0 and one of length 1
    "paged_prefill": "llama3-8b/prefill-mixed",  # q_len 0, seq_len 0
    "merge_states": "llama3-8b/merge-s2-with-empty-partials",
    "write_kv": "llama3-8b/write-kv-stacked-skips",  # skipped slots must stay NaN, the rest written
    "grouped_gemm": "mixtral-8x7b-like/grouped-gemm-bf16",  # empty experts
    "grouped_gemm_int4": "llama-like/grouped-gemm-int4-g32-zp-k-tail",
    "grouped_gemm_fp8": "deepseek-v3-like/grouped-gemm-fp8-block",
    "fused_moe": "mixtral-8x7b-like/moe-decode",  # 1 token: most experts empty
    "rms_norm": "llama3-8b/rms-norm-padded",  # an all-zero row (output 0, not unwritten)
    "route": "deepseek-v2/route-grouped-softmax-top6",  # k = 6 stored from an 8-wide tile
    "fused_add_rms_norm": "deepseek-v3/fused-add-rms-norm-two-programs",
    "rms_norm_quant_fp8": "small/rms-norm-quant-fp8-g64-tail",  # a short last group
    "rotary_embedding": "phi-like/rope-neox-partial-d80-fp32",  # in place: dims past rotary_dim kept
    "grouped_gemm_mxfp4": "gpt-oss-120b-like/grouped-gemm-mxfp4-k2880",
    "top_k_top_p_sample": "llama3-vocab/sample-mixed-params-masked",  # an unusable (empty) row
    "rejection_sample": "llama3-vocab/rejection-draft-probs",  # a request without drafts: bonus, then -1
    "mla_decode": "odd-heads/mla-decode-h20-r256-bs13",  # a sequence of length 0, 12 padded head rows
}


@pytest.mark.host_only("the case table only")
def test_every_op_has_a_case():
    assert set(CASES) == set(registry()), "a new op needs its case with empty rows here"


@pytest.mark.parametrize("op", list(CASES))
def test_no_output_row_is_left_unwritten(op, device):
    spec = get(op)
    inputs = spec.build(spec.check[CASES[op]], device, seed=1)
    with poisoned_allocations():
        actual = spec.call(getattr(T, op), inputs)
    expected = expected_outputs(spec, inputs)
    bad = [v for v in judge(spec, None, inputs, expected=expected, actual=actual) if not v.ok]
    assert not bad, "; ".join(v.detail[:400] for v in bad)


@pytest.mark.meta_unsupported("its lazy merge calls kernels.triton.ops.merge_states itself, past the public op entry")
def test_the_poison_shows_an_unwritten_row(device):
    """Positive control: a merge that leaves its last token unwritten fails under the poison."""
    from kernels.triton.ops.merge_states import merge_states

    def lazy(outs, lses):
        out = torch.empty_like(outs[0])
        lse = torch.empty(lses.shape[1:], dtype=torch.float32, device=lses.device)
        o, l = merge_states(outs[:, :-1], lses[:, :-1])
        out[:-1], lse[:-1] = o, l
        return out, lse

    spec = get("merge_states")
    inputs = spec.build(spec.check[CASES["merge_states"]], device, seed=1)
    expected = expected_outputs(spec, inputs)
    with poisoned_allocations():
        actual = spec.call(lazy, inputs)
    assert not all(v.ok for v in judge(spec, None, inputs, expected=expected, actual=actual))
