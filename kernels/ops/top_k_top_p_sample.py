"""``top_k_top_p_sample``: per-row temperature, top-k and top-p, then the exponential race (see docs/contract.md).

Inputs (``kernels.testing.sampling``): LLM-like logits (a Gaussian body under a head of a few tokens) stored in
the case's dtype, some masked to ``-inf``, each row a view into a NaN-padded wider row; ties planted at the top-k
and top-p boundaries and the noise planted so the last kept token (even rows) or the first dropped one (odd rows)
wins the race when kept. Tolerance: token ids are exact on clear rows; where float32 rounding may flip a near tie
(``kernels.reference.sampling.sample_admissible``, derived there) the token must be one a float32
implementation may pick.
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, OpSpec, ShapeSchema
from roofline import cost as C

LLAMA3_VOCAB, QWEN25_VOCAB, GEMMA3_VOCAB = 128256, 151936, 262144


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.sampling import build_sample  # deferred: the registry loads no torch

    args, kwargs = build_sample(shape, device, seed)
    return Inputs("top_k_top_p_sample", shape, args, kwargs, data={})


def call(fn, inputs: Inputs) -> dict:
    return {"token": fn(*inputs.args, **inputs.kwargs)}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.sampling import sample_tolerance  # deferred: the registry loads no torch

    return sample_tolerance(inputs, expected)


def extra_checks(inputs: Inputs, actual: dict) -> list:
    from kernels.testing.sampling import near_tie_rows  # deferred: the registry loads no torch

    return near_tie_rows(inputs, actual)


def cost(shape: dict):
    return C.top_k_top_p_sample(shape["batch"], shape["vocab"], dtype=shape["dtype"],
                                per_row=bool(shape.get("per_row")))


def _shape(batch, vocab, dtype="bfloat16", **extra) -> dict:
    return dict(batch=batch, vocab=vocab, dtype=dtype, **extra)


def cases() -> list:
    """Llama-3 (128256), Qwen2.5 (151936) and Gemma-3 (262144) vocabularies at batch 1, 64 and 256; the small
    shapes keep the vocabulary and cut the batch to 2 (each row's traffic is the same)."""
    out = []
    for model, vocab in (("llama3-8b", LLAMA3_VOCAB), ("qwen2.5-7b", QWEN25_VOCAB), ("gemma3-27b", GEMMA3_VOCAB)):
        for batch in (1, 64, 256):
            params = dict(temperature=0.8, top_k=50, top_p=0.9) if batch != 1 else dict(temperature=1.0, top_p=0.95)
            name = f"{model}/sample/b{batch}-" + ("k50-p0.9" if batch != 1 else "p0.95")
            goal = "sample_traffic" if (vocab, batch) == (LLAMA3_VOCAB, 64) else ""
            out.append(Case("top_k_top_p_sample", name, _shape(batch, vocab, **params),
                            _shape(min(batch, 2), vocab, **params), quick=(vocab, batch) == (LLAMA3_VOCAB, 64),
                            goal=goal))
    return out


def full_inputs(shape: dict, big, stride0: bool) -> tuple[tuple, dict]:
    """The logits at full size from ``big`` (no memory), the noise drawn by the kernel (values are arbitrary:
    grids and compiles depend on shapes only)."""
    params = {k: shape[k] for k in ("temperature", "top_k", "top_p") if k in shape}
    return (big((shape["batch"], shape["vocab"]), shape["dtype"]),), dict(dict(temperature=1.0, top_k=0, top_p=1.0),
                                                                         **params)


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small sample for the launch-path tests: per-row tensor parameters, given noise."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(6)
    logits = torch.from_numpy(rng.standard_normal((3, 300))).to(device, torch.float32)
    noise = torch.from_numpy(rng.exponential(size=(3, 300))).to(device, torch.float32)
    kwargs = dict(temperature=torch.tensor([1.0, 0.0, 0.7], device=device), top_k=torch.tensor([5, 0, 0], device=device),
                  top_p=torch.tensor([1.0, 1.0, 0.8], device=device), noise=noise)
    return (logits,), kwargs, {}


def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"token": torch.int64}


def draw(rng) -> dict:
    """3 to 9 rows of 500 to 3000 tokens, per-row parameters, a fifth masked; dense rows (the integrity checks
    refill the logits in place, which needs one block of memory)."""
    return _shape(rng.randint(3, 9), rng.randint(500, 3000), per_row=True, masked=0.2, padded=False)


def features(args, kwargs) -> set:
    feats = {f"dtype={str(args[0].dtype).replace('torch.', '')}"}
    if hasattr(kwargs.get("temperature"), "shape"):
        feats.add("per_row_parameters")
    return feats


SPEC = OpSpec(
    name="top_k_top_p_sample",
    summary="temperature, top-k and top-p (ties kept), then the exponential race; no sort of the vocabulary",
    reference="kernels.reference.sampling:top_k_top_p_sample",
    kernel="kernels.triton.ops.top_k_top_p_sample:top_k_top_p_sample",
    torch="kernels.torch_eager:top_k_top_p_sample",
    outputs=("token",),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    extra_checks=extra_checks, out_dtypes=out_dtypes, draw=draw,
    shape=ShapeSchema({"batch": "rows (sequences sampled this step)", "vocab": "vocabulary size",
                       "dtype": "the logits' dtype"},
                      {"temperature": "every row's temperature", "top_k": "every row's top_k (<= 0: off)",
                       "top_p": "every row's top_p", "per_row": "inputs: a mix of per-row parameter tensors",
                       "masked": "inputs: fraction of logits masked to -inf", "spread": "inputs: the body's std",
                       "empty_rows": "inputs: rows of all -inf (sample -1)",
                       "plant": "inputs: boundary ties and decisive noise (default on)",
                       "padded": "inputs: rows as views into NaN-padded wider rows (default on)"}),
    keywords={"temperature": "", "noise": "",
              # required, so the generic check computes with the zero of their type; top_p 0 is invalid and
              # top_k 0 (keep all) is hidden by top_p on the k20-p0.8 case: proven in test_top_k_top_p_sample.py
              "top_k": "changes the output: its own parity tests (a call cannot drop it; 0 keeps all)",
              "top_p": "changes the output: its own parity tests (a call cannot drop it; 0 is invalid)"},
    goals={"sample_traffic": (4.0, "top_k_top_p_sample counted traffic at most 4 reads of the logits (vocab "
                                   "128256, batch 64): no sort of the vocabulary")},
    full_inputs=full_inputs, style=("P", "tab:olive"), launch_cases={"": launch_case}, validation_reads_device=True,
    check={"llama3-vocab/sample-mixed-params-masked": _shape(9, 2000, per_row=True, masked=0.3, empty_rows=1),
           "qwen2.5-vocab/sample-k20-p0.8-fp32": _shape(6, 3001, "float32", temperature=0.7, top_k=20, top_p=0.8),
           "gemma3-vocab/sample-p0.9-flat": _shape(4, 1500, "float16", temperature=1.5, top_p=0.9, spread=0.5)},
)
