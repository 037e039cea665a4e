"""``merge_states``: combine S partial attention states (out, LSE) into one (see docs/contract.md).

Inputs are real partial states (``split_attention``: a key set cut into S chunks, each attended in float64,
stored in the case's dtype), so the merge must reproduce attention over all keys; partial 0 is empty (LSE
-inf, out NaN) at every ``MERGE_EMPTY_STEP``-th token and head, so a merge that multiplies an empty partial in,
even by 0, gives NaN. Tolerances: out is a convex combination of partial outs bounded by their max |out|
(partial-store and final-cast roundings, ``attention_out_atol``); lse = max + log(sum of <= S weights):
float32 rounding relative to the largest |lse| (``lse_atol``).
"""
from __future__ import annotations

import numpy as np

from kernels import reference as R
from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from kernels.reference._arrays import f64
from kernels.testing.tolerances import attention_out_atol, lse_atol
from roofline import cost as C

# partial 0 is empty at every MERGE_EMPTY_STEP[0]-th token and MERGE_EMPTY_STEP[1]-th head; the cost model's
# minimum need not read those rows' out
MERGE_EMPTY_STEP = (3, 2)


def split_attention(num_parts: int, *, num_keys=40, num_tokens=3, heads=4, head_dim=80, seed=0, logit_shift=0.0):
    """Chunked partial states of one attention call, and the whole call's (out, lse), float64 numpy:
    ``(outs [S, T, H, D], lses [S, T, H], (whole_out, whole_lse), max |V|)``.

    ``logit_shift`` adds a constant to every logit (via a constant-direction component in q and k), moving
    every LSE by about that much without changing the outputs' scale.
    """
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((num_tokens, heads, head_dim))
    k = rng.standard_normal((num_keys, heads, head_dim))
    v = rng.standard_normal((num_keys, heads, head_dim))
    if logit_shift:
        q[..., 0], k[..., 0] = np.sign(logit_shift) * 10.0, abs(logit_shift) / 10.0 * head_dim ** 0.5
    scale = head_dim ** -0.5
    pos = np.full(num_tokens, num_keys - 1)  # every token sees every key
    whole = R.dense_attention(q, k, v, pos, scale=scale)
    cuts = np.sort(rng.choice(np.arange(1, num_keys), num_parts - 1, replace=False)) if num_parts > 1 else []
    bounds = [0, *cuts, num_keys]
    parts = [R.dense_attention(q, k[a:b], v[a:b], pos - a, scale=scale) for a, b in zip(bounds, bounds[1:])]
    outs = np.stack([p[0] for p in parts])
    lses = np.stack([p[1] for p in parts])
    return outs, lses, whole, float(np.abs(v).max())


def as_torch(outs, lses, dtype, device):
    import torch  # deferred: the registry loads no torch

    from kernels.testing.paged import torch_dtype  # deferred: the registry loads no torch

    return torch.from_numpy(outs).to(device, torch_dtype(dtype)), torch.from_numpy(lses).to(device, torch.float32)


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    s, t, h, d = shape["num_states"], shape["num_tokens"], shape["num_heads"], shape["head_dim"]
    outs, lses, _, _ = split_attention(s, num_keys=max(8 * s, 16), num_tokens=t, heads=h, head_dim=d, seed=seed)
    ts, hs = MERGE_EMPTY_STEP
    lses[0, ::ts, ::hs] = -np.inf  # an empty partial: no keys, contributes nothing, not even its NaN out
    outs[0, ::ts, ::hs] = np.nan
    o, l = as_torch(outs, lses, shape["dtype"], device)
    return Inputs("merge_states", shape, (o, l), {})


def call(fn, inputs: Inputs) -> dict:
    out, lse = fn(*inputs.args, **inputs.kwargs)
    return {"out": out, "lse": lse}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    """Per element. out: the merged row is ``sum_s w_s out_s`` with ``w_s = exp(lse_s - lse)``; every rounding
    (the float32 weights, the partials as stored, the final cast) is relative to ``m = sum_s w_s |out_s|``, so
    the budget is ``attention_out_atol(dtype, m)`` (4 u m); a row with no keys has m = 0 and must be exactly 0.
    lse: float32 rounding relative to the largest |lse| (``lse_atol``)."""

    outs, lses, ref_lse = f64(inputs.args[0]), f64(inputs.args[1]), f64(expected["lse"])
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.where(np.isfinite(lses) & np.isfinite(ref_lse)[None], np.exp(lses - ref_lse[None]), 0.0)
    mag = (w[..., None] * np.abs(np.where(np.isfinite(outs), outs, 0.0))).sum(axis=0)
    finite = np.abs(ref_lse[np.isfinite(ref_lse)])
    dtype = str(inputs.args[0].dtype).replace("torch.", "")
    return {"out": attention_out_atol(dtype, mag), "lse": lse_atol("float32", float(finite.max(initial=1.0)))}


def cost(shape: dict):
    ts, hs = MERGE_EMPTY_STEP
    empty = -(-shape["num_tokens"] // ts) * -(-shape["num_heads"] // hs)
    return C.merge_states(shape["num_states"], shape["num_tokens"], shape["num_heads"], shape["head_dim"],
                          dtype=shape["dtype"], empty_rows=empty)


def _shape(s, t, h, d, dtype="bfloat16") -> dict:
    return dict(num_states=s, num_tokens=t, num_heads=h, head_dim=d, dtype=dtype)


def cases() -> list:
    return [Case("merge_states", "llama3-8b/merge/decode-b64-s2", _shape(2, 64, 32, 128), _shape(2, 6, 32, 128), True),
            Case("merge_states", "llama3-8b/merge/prefill-t2k-s2", _shape(2, 2048, 32, 128),
                 _shape(2, 12, 32, 128))]


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small merge for the launch-path tests (``OpSpec.launch_cases``), one empty partial row."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(5)
    outs = torch.from_numpy(rng.standard_normal((3, 5, 4, 32))).to(device, torch.float16)
    lses = torch.from_numpy(rng.standard_normal((3, 5, 4))).to(device, torch.float32)
    lses[1, 2] = float("-inf")
    return (outs, lses), {}, {}
def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"out": inputs.args[0].dtype, "lse": torch.float32}


def draw(rng) -> dict:
    """2 to 4 states over 9 to 40 tokens, 8 heads of 64: more tokens than any check shape."""
    return _shape(rng.randint(2, 4), rng.randint(9, 40), 8, 64)


def features(args, kwargs) -> set:
    return {f"num_states={args[0].shape[0]}", f"dtype={str(args[0].dtype).replace('torch.', '')}"}


INVARIANCE = "kernels.testing.invariance"

SPEC = OpSpec(
    name="merge_states",
    summary="merge S partial attention states (split-KV, cascade, chunked prefill)",
    reference="kernels.reference.attention:merge_states",
    kernel="kernels.triton.ops.merge_states:merge_states",
    torch="kernels.torch_eager:merge_states",
    outputs=("out", "lse"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    shape=ShapeSchema({"num_states": "partial states S", "num_tokens": "tokens", "num_heads": "heads",
                       "head_dim": "head size", "dtype": "the partial outs' (and the output's) dtype"}),
    style=("^", "tab:green"), launch_cases={"": launch_case}, validation_reads_device=False,
    out_dtypes=out_dtypes, draw=draw,
    check={"llama3-8b/merge-s2-with-empty-partials": _shape(2, 7, 32, 128),
           "qwen2.5-7b/merge-s5-fp16": _shape(5, 5, 28, 128, "float16")},
    invariance=(Invariance("merge_states token order", f"{INVARIANCE}:merge_row_order", ("default",), ("default",)),
                # the contract: commutative up to rounding only (measured, not promised)
                Invariance("merge_states partial order", f"{INVARIANCE}:merge_partial_order", ("default",), ())),
)
