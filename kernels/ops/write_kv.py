"""``write_kv``: scatter new keys and values into the paged caches by slot (see docs/contract.md).

The caches start as NaN everywhere, so a slot written that should not be (a skipped token with slot -1, a
wrong block) or a slot not written that should be shows up. A copy, or one round-to-nearest-even onto the
e4m3 grid, is exact: the tolerance is 0 (bitwise, NaN where the reference leaves NaN).
"""
from __future__ import annotations

import numpy as np

from kernels.ops import Case, Inputs, Invariance, OpSpec, ShapeSchema
from roofline import cost as C


def poisoned_caches(num_blocks, block_size, heads, head_dim, dtype, layout, device):
    """Two caches full of NaN, as separate tensors or as views of one stacked/interleaved tensor."""
    import torch  # deferred: the registry loads no torch

    shape = (num_blocks, block_size, heads, head_dim)
    nan = torch.full(shape, float("nan"))
    if layout == "stacked":
        kv = torch.stack([nan, nan]).to(device, dtype)
        return kv[0], kv[1]
    if layout == "interleaved":
        kv = torch.stack([nan, nan], dim=1).to(device, dtype)
        return kv[:, 0], kv[:, 1]
    return nan.to(device, dtype), nan.clone().to(device, dtype)


def random_slots(num_tokens, num_slots, skipped, index_dtype, gen):
    """Distinct, non-sequential slots (a random permutation), ``skipped`` of them -1."""
    import torch  # deferred: the registry loads no torch

    slots = torch.randperm(num_slots, generator=gen)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=gen)[:skipped]] = -1
    return slots.to(index_dtype)


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    import torch  # deferred: the registry loads no torch

    from kernels.testing.paged import torch_dtype  # deferred: the registry loads no torch

    g = torch.Generator().manual_seed(seed)
    t, hkv, d, bs = shape["num_tokens"], shape["num_kv_heads"], shape["head_dim"], shape["block_size"]
    num_blocks = -(-t // bs) + 2
    key = torch.randn((t, hkv, d), generator=g).to(device, torch_dtype(shape["dtype"]))
    value = torch.randn((t, hkv, d), generator=g).to(device, torch_dtype(shape["dtype"]))
    slots = random_slots(t, num_blocks * bs, shape["skipped"], torch.int64, g).to(device)
    caches = poisoned_caches(num_blocks, bs, hkv, d, torch_dtype(shape["kv_dtype"]), shape.get("layout", "separate"),
                             device)
    kwargs = {k: shape[k] for k in ("k_scale", "v_scale") if k in shape}
    return Inputs("write_kv", shape, (key, value, caches[0], caches[1], slots), kwargs, caches)


def call(fn, inputs: Inputs) -> dict:
    """Each implementation writes into fresh clones of the NaN caches (views kept: a stacked layout stays one
    tensor)."""
    key, value, k_cache, v_cache, slots = inputs.args
    base = k_cache._base if k_cache._base is not None and k_cache._base is v_cache._base else None
    if base is not None:
        fresh = base.clone()
        kc, vc = (fresh.as_strided(c.shape, c.stride(), c.storage_offset()) for c in (k_cache, v_cache))
    else:
        kc, vc = k_cache.clone(), v_cache.clone()
    fn(key, value, kc, vc, slots, **inputs.kwargs)
    return {"k_cache": kc, "v_cache": vc}


def tolerance(inputs: Inputs, expected: dict) -> dict:
    return {"k_cache": 0.0, "v_cache": 0.0}  # a copy or one exact rounding: bitwise


def cost(shape: dict):
    return C.write_kv(shape["num_tokens"], num_kv_heads=shape["num_kv_heads"], head_dim=shape["head_dim"],
                      dtype=shape["dtype"], kv_dtype=shape["kv_dtype"], valid_tokens=shape["num_tokens"] - shape["skipped"])


def _shape(t, hkv, d, bs, dtype, kv_dtype, skipped, **extra) -> dict:
    return dict(num_tokens=t, num_kv_heads=hkv, head_dim=d, block_size=bs, dtype=dtype, kv_dtype=kv_dtype,
                skipped=skipped, **extra)


def cases() -> list:
    return [Case("write_kv", "llama3-8b/write_kv/decode-64", _shape(64, 8, 128, 16, "bfloat16", "bfloat16", 0),
                 _shape(12, 8, 128, 16, "bfloat16", "bfloat16", 2), True),
            Case("write_kv", "llama3-8b/write_kv/prefill-2k-fp8",
                 _shape(2048, 8, 128, 16, "bfloat16", "float8_e4m3fn", 0),
                 _shape(24, 8, 128, 16, "bfloat16", "float8_e4m3fn", 3), tracked=True)]


def launch_case(device, fp8: bool) -> tuple[tuple, dict, dict]:
    """A small write for the launch-path tests (``OpSpec.launch_cases``): a skipped slot, int64 slots, a tensor
    K scale into an fp8 cache (the kernel must read it from device memory)."""
    import torch  # deferred: the registry loads no torch

    rng = np.random.default_rng(4)
    key = torch.from_numpy(rng.standard_normal((6, 2, 32))).to(device, torch.float16)
    value = torch.from_numpy(rng.standard_normal((6, 2, 32))).to(device, torch.float16)
    cdt = torch.float8_e4m3fn if fp8 else torch.float16
    k_cache = torch.zeros((4, 16, 2, 32), dtype=cdt, device=device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 17, -1, 40, 63, 0], dtype=torch.int64, device=device)
    kwargs = dict(k_scale=torch.tensor([0.25], device=device), v_scale=0.5) if fp8 else {}
    return (key, value, k_cache, v_cache, slots), kwargs, {}
def draw(rng) -> dict:
    """9 to 40 tokens (2 skipped) into a bfloat16 cache of 8 heads of 128."""
    return _shape(rng.randint(9, 40), 8, 128, 16, "bfloat16", "bfloat16", 2)


def features(args, kwargs) -> set:
    feats = {f"dtype={str(args[0].dtype).replace('torch.', '')}"}
    if "float8" in str(args[2].dtype):
        feats.add("fp8_kv")
    return feats


INVARIANCE = "kernels.testing.invariance"

SPEC = OpSpec(
    name="write_kv",
    summary="scatter new K/V rows into the paged caches (slot -1 skipped; fp8 quantization)",
    reference="kernels.reference.attention:write_kv",
    kernel="kernels.triton.ops.write_kv:write_kv",
    torch="kernels.torch_eager:write_kv",
    outputs=("k_cache", "v_cache"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features,
    shape=ShapeSchema({"num_tokens": "new tokens", "num_kv_heads": "KV heads", "head_dim": "head size",
                       "block_size": "cache block size", "dtype": "key/value dtype", "kv_dtype": "the caches' dtype",
                       "skipped": "tokens whose slot is -1"},
                      {"k_scale": "fp8 cache's K scale", "v_scale": "fp8 cache's V scale",
                       "layout": "inputs: the caches' layout ('stacked', 'interleaved', ...)"}),
    writes=(2, 3), draw=draw,
    keywords={"k_scale": "", "v_scale": ""},
    style=("v", "tab:gray"), writes_args=(2, 3),
    launch_cases={"": lambda device: launch_case(device, False), "fp8": lambda device: launch_case(device, True)},
    check={"llama3-8b/write-kv-stacked-skips": _shape(37, 8, 128, 16, "bfloat16", "bfloat16", 5, layout="stacked"),
           "llama3-8b/write-kv-fp8-scaled": _shape(29, 8, 128, 16, "float16", "float8_e4m3fn", 3, k_scale=0.37,
                                                   v_scale=1.9, layout="interleaved")},
    invariance=(Invariance("write_kv token order", f"{INVARIANCE}:write_kv_token_order", ("default",), ("default",)),
                Invariance("write_kv token order fp8", f"{INVARIANCE}:write_kv_token_order", ("default",), ("default",),
                           args=(("kv_dtype", "float8_e4m3fn"),))),
)
