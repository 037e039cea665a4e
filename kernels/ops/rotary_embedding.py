"""``rotary_embedding``: rotate q and k in place by each token's position (see docs/contract.md).

Inputs (``kernels.testing.norms``): q and k views of one qkv buffer whose V part is NaN; positions of a ragged
batch (chunks starting anywhere, one at the cache's last row, one past 2**16 where the cache is that long); the
cos/sin cache NaN at every row no token uses. Each implementation rotates a fresh copy of the qkv buffer (views
kept). Tolerance (``rope_atol``): three float32 roundings of ``(|a| + |b|)(|cos| + |sin|)`` plus the cast to q's
dtype on the rotated dims, exactly 0 on the dims past ``rotary_dim``. The catalogue: Llama-3-8B (NeoX, 128 of 128,
a 128k-position cache) and GPT-J-6B (GPT-J pairs, 64 of 256); the goal: counted traffic within 1.05x of minimum.
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from kernels.ops.models import GPTJ_6B_ROPE, LLAMA3_8B_ROPE, NORM_TOKENS, small_tokens
from roofline import cost as C


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    import torch  # deferred: the registry loads no torch

    from kernels.testing.norms import poisoned_cache, qkv_views, ragged_positions  # deferred: no torch

    rng = np.random.default_rng(seed)
    t, mp = shape["num_tokens"], shape["max_position"]
    q, k, _ = qkv_views(t, shape["num_q_heads"], shape["num_kv_heads"], shape["head_dim"], shape["dtype"], device,
                        rng)
    pos = ragged_positions(t, mp, rng)
    cache = poisoned_cache(pos, mp, shape["rotary_dim"], shape.get("cache_dtype", "float32"), device)
    kwargs = {"is_neox": shape["is_neox"]}
    if shape.get("pass_rotary_dim"):
        kwargs["rotary_dim"] = shape["rotary_dim"]
    positions = torch.from_numpy(pos).to(device, torch.int64 if shape.get("positions_dtype", "int64") == "int64"
                                         else torch.int32)
    return Inputs("rotary_embedding", shape, (positions, q, k, cache), kwargs)


def call(fn, inputs: Inputs) -> dict:
    """Each implementation rotates views of a fresh copy of the qkv buffer (its NaN V part included)."""
    positions, q, k, cache = inputs.args
    if q._base is not None and q._base is k._base:
        fresh = q._base.clone()
        qc, kc = (fresh.as_strided(t.shape, t.stride(), t.storage_offset()) for t in (q, k))
    else:
        qc, kc = q.clone(), k.clone()
    if fn is SPEC.reference_fn():
        # the definition is the exact rotation, before the reference's store to q's dtype: the judge compares an
        # implementation's one store rounding with the exact values (against the reference's own rounding, an
        # exact value on a rounding midpoint would put a right kernel a whole ulp away)
        import torch  # deferred: the registry loads no torch

        from kernels.reference.norms import rotated  # deferred: kept with its use

        return dict(zip(("q", "k"), (torch.from_numpy(v) for v in rotated(positions, qc, kc, cache,
                                                                            **inputs.kwargs))))
    fn(positions, qc, kc, cache, **inputs.kwargs)
    return {"q": qc, "k": kc}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.reference._arrays import f64  # deferred: kept with its use
    from kernels.testing.norms import rope_atol  # deferred: the registry loads no torch

    positions, q, k, cache = inputs.args
    rows = f64(cache)[f64(positions).astype(np.int64)]
    rd, neox = int(cache.shape[1]), bool(inputs.kwargs["is_neox"])
    return {"q": rope_atol(q, rows, neox, rd, q.dtype), "k": rope_atol(k, rows, neox, rd, k.dtype)}


def cost(shape: dict):
    return C.rotary_embedding(shape["num_tokens"], num_q_heads=shape["num_q_heads"],
                              num_kv_heads=shape["num_kv_heads"], rotary_dim=shape["rotary_dim"],
                              dtype=shape["dtype"], cache_dtype=shape.get("cache_dtype", "float32"),
                              positions_dtype=shape.get("positions_dtype", "int64"))


def rope_shape(t, *, num_q_heads, num_kv_heads, head_dim, rotary_dim, is_neox, max_position, dtype="bfloat16",
               cache_dtype="bfloat16", **extra) -> dict:
    return dict(num_tokens=t, num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                rotary_dim=rotary_dim, is_neox=is_neox, max_position=max_position, dtype=dtype,
                cache_dtype=cache_dtype, **extra)


def cases() -> list:
    out = [Case("rotary_embedding", f"llama3-8b/rope-neox/t{t}", rope_shape(t, **LLAMA3_8B_ROPE),
                rope_shape(small_tokens(t), **LLAMA3_8B_ROPE), quick=(t == 1), goal="rope_traffic",
                tracked=(t == 1024)) for t in NORM_TOKENS]
    out += [Case("rotary_embedding", f"gpt-j-6b/rope-gptj-partial/t{t}", rope_shape(t, **GPTJ_6B_ROPE),
                 rope_shape(small_tokens(t), **GPTJ_6B_ROPE), goal="rope_traffic") for t in (64, 2048)]
    return out


def launch_case(device) -> tuple[tuple, dict, dict]:
    """A small rotation for the launch-path tests (``OpSpec.launch_cases``): GPT-J pairs, partial rotary."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(9)
    q = torch.from_numpy(rng.standard_normal((5, 4, 64))).to(device, torch.bfloat16)
    k = torch.from_numpy(rng.standard_normal((5, 2, 64))).to(device, torch.bfloat16)
    from kernels.reference.norms import rope_cos_sin_cache  # deferred: kept with its use

    cache = torch.from_numpy(rope_cos_sin_cache(100, 32)).to(device, torch.float32)
    pos = torch.tensor([3, 99, 0, 41, 42], dtype=torch.int64, device=device)
    return (pos, q, k, cache), {"is_neox": False}, {}


def draw(rng) -> dict:
    """9 to 40 tokens of Llama-3-8B's heads, a 4096-position cache."""
    return rope_shape(rng.randint(9, 40), **{**LLAMA3_8B_ROPE, "max_position": 4096})


def features(args, kwargs) -> set:
    feats = {f"dtype={str(args[1].dtype).replace('torch.', '')}", "neox" if kwargs.get("is_neox") else "gptj"}
    if int(args[3].shape[1]) < int(args[1].shape[2]):
        feats.add("partial_rotary")
    return feats


def row_shape(shape: dict) -> dict:
    return {k: shape[k] for k in ("num_tokens", "num_q_heads", "num_kv_heads", "head_dim", "rotary_dim", "is_neox")}


SPEC = OpSpec(
    name="rotary_embedding",
    summary="rotary position embedding in place on q and k (NeoX or GPT-J, partial rotary)",
    reference="kernels.reference.norms:rotary_embedding",
    kernel="kernels.triton.ops.rotary_embedding:rotary_embedding",
    torch="kernels.torch_eager:rotary_embedding",
    outputs=("q", "k"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    shape=ShapeSchema({"num_tokens": "tokens T", "num_q_heads": "query heads", "num_kv_heads": "key heads",
                       "head_dim": "head size D", "rotary_dim": "rotated dims (the cache's width)",
                       "is_neox": "NeoX halves (True) or GPT-J pairs (False)",
                       "max_position": "the cache's rows", "dtype": "q's and k's dtype"},
                      {"cache_dtype": "the cos/sin cache's dtype (default float32)",
                       "positions_dtype": "int64 (default) or int32",
                       "pass_rotary_dim": "inputs: pass rotary_dim= explicitly"}),
    goals={"rope_traffic": (1.05, "rotary_embedding counted traffic within 1.05x of minimum bytes (positions, "
                                  "cos/sin rows and the rotated dims of q and k, each once)")},
    keywords={"is_neox": "",
              "rotary_dim": "None or the cache's width (anything else is a ValueError): the cache's width already "
                            "says it, so no accepted value changes the output"},
    style=("X", "tab:olive"), launch_cases={"": launch_case}, validation_reads_device=True,
    invariance=(Invariance("rotary_embedding token alone vs batch",
                           "kernels.testing.invariance:rope_token_alone_vs_batch", ("default",), ("default",)),),
    draw=draw, row_shape=row_shape, writes=(1, 2), writes_args=(1, 2),
    check={"llama3-8b/rope-neox-past-2-16": rope_shape(12, **{**LLAMA3_8B_ROPE, "max_position": 70000}),
           "gpt-j-6b/rope-gptj-partial-fp16": rope_shape(9, **{**GPTJ_6B_ROPE, "dtype": "float16",
                                                                "cache_dtype": "float32"}),
           # flashinfer-bench's published rope_with_cos_sin_cache_neox_style_d128_rd64 (MiniMax-M2: 48 q / 8 kv
           # heads, the first 64 of 128 dims rotated): bf16 q/k, a float32 cache, int64 positions
           "minimax-m2/rope-neox-partial-d128-rd64": rope_shape(7, num_q_heads=48, num_kv_heads=8, head_dim=128,
                                                                rotary_dim=64, is_neox=True, max_position=4096,
                                                                cache_dtype="float32"),
           "phi-like/rope-neox-partial-d80-fp32": rope_shape(7, num_q_heads=8, num_kv_heads=2, head_dim=80,
                                                             rotary_dim=32, is_neox=True, max_position=512,
                                                             dtype="float32", cache_dtype="float32",
                                                             positions_dtype="int32", pass_rotary_dim=True)},
)
