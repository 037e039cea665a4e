"""``rejection_sample``: speculative decoding's verification of draft tokens (see docs/contract.md).

Inputs (``kernels.testing.sampling.build_rejection``): requests with 0 to ``max_draft`` draft tokens, target
probabilities from LLM-like logits, a draft model close to them, draft tokens drawn from the draft (or agreeing
with the target's choice, then not, for a deterministic draft), a token the target rules out planted with uniform 0
at every third position, rows as views into NaN-padded rows. Tolerance: exact up to a row's first decision that
float32 rounding may flip (``rejection_tolerance``), nothing after it.
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, OpSpec, ShapeSchema
from roofline import cost as C

LLAMA3_VOCAB = 128256


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.sampling import build_rejection  # deferred: the registry loads no torch

    args, kwargs = build_rejection(shape, device, seed)
    return Inputs("rejection_sample", shape, args, kwargs)


def call(fn, inputs: Inputs) -> dict:
    return {"output_token_ids": fn(*inputs.args, **inputs.kwargs)}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.sampling import rejection_tolerance  # deferred: the registry loads no torch

    return {"output_token_ids": rejection_tolerance(inputs.args, inputs.kwargs)}


def _counts(shape: dict) -> list[int]:
    from kernels.testing.sampling import draft_counts  # deferred: the registry loads no torch

    return draft_counts(shape["batch"], shape["max_draft"])


def cost(shape: dict):
    return C.rejection_sample(_counts(shape), shape["vocab"], probs_dtype=shape.get("dtype", "float32"),
                              has_draft_probs=shape.get("draft", "probs") == "probs")


def _shape(batch, vocab, max_draft, draft="probs", dtype="float32", **extra) -> dict:
    return dict(batch=batch, vocab=vocab, max_draft=max_draft, draft=draft, dtype=dtype, **extra)


def cases() -> list:
    """Llama-3's vocabulary, 16 requests of up to 4 draft tokens, with draft probabilities (EAGLE, a draft model)
    and without (n-gram); the small shapes keep the vocabulary, 2 requests."""
    return [Case("rejection_sample", f"llama3-8b/rejection/b16-k4-{d}", _shape(16, LLAMA3_VOCAB, 4, d),
                 _shape(2, LLAMA3_VOCAB, 4, d), quick=d == "probs") for d in ("probs", "none")]


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small verification for the launch-path tests: 3 requests (2, 0 and 3 drafts), draft probabilities."""
    from kernels.testing.sampling import build_rejection  # deferred: the registry loads no torch

    args, kwargs = build_rejection(dict(batch=3, vocab=64, max_draft=3, padded=False), device, 7)
    return args, kwargs, {}


def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"output_token_ids": torch.int64}


def features(args, kwargs) -> set:
    return {"draft_probs" if args[1] is not None else "deterministic_draft"}


SPEC = OpSpec(
    name="rejection_sample",
    summary="speculative decoding's verification: accept, recover at the first rejection, bonus token",
    reference="kernels.reference.sampling:rejection_sample",
    kernel="kernels.triton.ops.rejection_sample:rejection_sample",
    torch="kernels.torch_eager:rejection_sample",
    outputs=("output_token_ids",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    # no drawn case: the integrity refill negates the first float argument, and negative probabilities are
    # invalid input
    out_dtypes=out_dtypes,
    shape=ShapeSchema({"batch": "requests", "vocab": "vocabulary size", "max_draft": "most draft tokens a request",
                       "draft": "'probs' (draft probabilities given) or 'none' (a deterministic draft)",
                       "dtype": "the probabilities' dtype"},
                      {"padded": "inputs: rows as views into NaN-padded wider rows (default on)"}),
    # required tensor inputs (the randomness the oracle is exact for, the draft lengths): a call cannot drop them
    # and their zero is no "ignored" value (uniforms 0 accept as the case's draws do; noise 0 and float counts are
    # invalid), so the generic drop-the-keyword check does not apply; the parity tests on the check cases and the
    # accept-at-zero wrong module (test_rejection_sample.py) exercise them
    keywords={"uniforms": "decides each acceptance: exact parity on the check cases (a required input)",
              "recovery_noise": "decides the recovered token: exact parity on the check cases (a required input)",
              "num_draft_tokens": "the draft lengths: exact parity on ragged check cases (a required input)"},
    style=("X", "tab:cyan"), launch_cases={"": launch_case}, validation_reads_device=True,
    check={"llama3-vocab/rejection-draft-probs": _shape(6, 1500, 5),
           "qwen2.5-vocab/rejection-ngram-bf16": _shape(5, 1200, 4, "none", "bfloat16")},
)
