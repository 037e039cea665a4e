"""Per-op plumbing for the report: build a case's inputs, run the kernel and the reference, derive the tolerance.

``prepare(op, shape, device)`` returns a ``Prepared``: ``run()`` calls the Triton kernel (through the public
name, so a missing kernel module surfaces as ``Unavailable``), ``expected()`` the float64 reference on the same
inputs, and ``check(out)`` compares with a tolerance derived from the arithmetic (one-line reason each) and
returns ``(ok, max_rel_err, detail)``. Unowned memory is poisoned (NaN) wherever an op could wrongly read it.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from roofline.catalogue import MERGE_EMPTY_STEP, expert_counts

FP32_U = 2.0 ** -24


class Unavailable(Exception):
    """The op's kernel (or a helper it needs) is not in this build."""


def kernel(name: str):
    """``kernels.triton.<name>``, or Unavailable when its module has not landed."""
    import kernels.triton as kt

    try:
        return getattr(kt, name)
    except ImportError as exc:  # the module, or something it imports, has not landed
        raise Unavailable(f"kernels.triton.{name}: not available in this build ({exc})") from exc
    except AttributeError as exc:
        raise Unavailable(f"kernels.triton.{name}: not available in this build ({exc})") from exc


def reference(name: str):
    import kernels.reference as kr

    try:
        return getattr(kr, name)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"kernels.reference.{name}: not available in this build ({exc})") from exc


def u(dtype) -> float:
    from correctness.tolerances import unit_roundoff

    return unit_roundoff(str(dtype).replace("torch.", ""))


def cast_u(dtype) -> float:
    """Largest relative error of one float32 -> ``dtype`` cast in a kernel: u (round to nearest even) on a GPU;
    2u for bfloat16 under triton 3.9's interpreter, whose fp32 -> bf16 cast truncates (``_convert_float`` in
    triton/runtime/interpreter.py rounds only when asked for RTNE, and ``.to(tl.bfloat16)`` does not ask).
    Result stores round correctly everywhere (``kernels.triton.common.cast_rtne``); the 2u stays for the
    interior casts (e.g. softmax weights before ``P @ V``) that still use ``.to()``."""
    from kernels.runtime import interpreter_enabled

    name = str(dtype).replace("torch.", "")
    return u(name) * (2 if interpreter_enabled() and name == "bfloat16" else 1)


@dataclass
class Prepared:
    op: str
    run: Callable[[], Any]
    expected: Callable[[], Any]
    check: Callable[[Any, Any], tuple[bool, float, str]]  # (actual, expected) -> (ok, max_rel_err, detail)
    args: tuple = ()
    kwargs: dict | None = None


def _result(actual, expected, atol: float, name: str) -> tuple[bool, float, str]:
    from correctness.assertions import describe_mismatch, max_abs_err, max_rel_err

    a = actual.detach().cpu() if hasattr(actual, "detach") else actual
    err = max_abs_err(a, expected)
    scale = float(np.nanmax(np.abs(np.where(np.isfinite(expected), expected, np.nan)))) if np.size(expected) else 0.0
    if scale == 0.0 or atol >= scale:
        return False, max_rel_err(a, expected), f"{name}: vacuous comparison (|expected| <= tolerance)"
    detail = describe_mismatch(a, expected, atol=atol, name=name) or ""
    return err <= atol, max_rel_err(a, expected), detail


# ------------------------------------------------------------------------------------------------ attention

def _paged_batch(shape: dict, device: str, seed: int):
    """Interpreter-sized shapes: the parity suite's poisoned generator. GPU-sized: the same poison, built with
    torch on the device (the float64 numpy generator would need tens of GB at 64 x 32k)."""
    import torch

    q_lens = None if shape["q_len"] == 1 else shape["q_len"]
    kv_tokens = sum(shape["seq_len"])
    if device == "cpu" or kv_tokens * shape["num_kv_heads"] * shape["head_dim"] < 2 ** 24:
        from correctness.inputs import make_paged_batch

        return make_paged_batch(shape["seq_len"], q_lens, num_q_heads=shape["num_q_heads"],
                                num_kv_heads=shape["num_kv_heads"], head_dim=shape["head_dim"],
                                block_size=shape["block_size"], dtype=shape["dtype"], kv_dtype=shape["kv_dtype"],
                                seed=seed, device=device)
    return _device_paged_batch(shape, device, seed, torch)


def _device_paged_batch(shape, device, seed, torch):
    from correctness.inputs import PagedBatch, torch_dtype

    g = torch.Generator(device=device).manual_seed(seed)
    bs, hkv, d, hq = shape["block_size"], shape["num_kv_heads"], shape["head_dim"], shape["num_q_heads"]
    lens = list(shape["seq_len"])
    q_lens = [1] * len(lens) if shape["q_len"] == 1 else list(shape["q_len"])
    need = [-(-n // bs) for n in lens]
    num_blocks = sum(need) + 2
    pool = torch.randperm(num_blocks, generator=g, device=device)
    table = torch.full((len(lens), max(need) + 2), -1, dtype=torch.int32, device=device)
    caches = []
    for _ in range(2):
        c = torch.randn((num_blocks, bs, hkv, d), generator=g, device=device, dtype=torch.bfloat16)
        caches.append(c)
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = pool[start:start + n].to(torch.int32)
        tail = lens[i] % bs
        for c in caches:
            if tail:
                c[pool[start + n - 1], tail:] = float("nan")
        start += n
    for c in caches:
        c[pool[start:]] = float("nan")  # spare blocks
    kv_dtype = torch_dtype(shape["kv_dtype"])
    k_cache, v_cache = (c.to(kv_dtype) for c in caches)
    q = torch.randn((sum(q_lens), hq, d), generator=g, device=device).to(torch_dtype(shape["dtype"]))
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32, device=device)
    kwargs = {"k_scale": 1.0, "v_scale": 1.0} if shape["kv_dtype"] == "float8_e4m3fn" else {}
    return PagedBatch(q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32, device=device), qsl, kwargs)


def _v_max(batch) -> float:
    import torch

    v = batch.v_cache.float()
    return float(torch.nan_to_num(v, nan=0.0).abs().max()) * float(batch.kwargs.get("v_scale", 1.0))


def _attention(op: str, shape: dict, device: str, seed: int) -> Prepared:
    fn = kernel(op)
    ref = reference(op)
    b = _paged_batch(shape, device, seed)
    args = b.decode_args() if op == "paged_decode" else b.prefill_args()
    kwargs = dict(b.kwargs)
    from correctness.tolerances import attention_out_atol

    def check(out, expected):
        # the output is a convex combination of V rows: 4 roundings of u * max|V| (see attention_out_atol)
        return _result(out, expected, attention_out_atol(shape["dtype"], _v_max(b)), op)

    return Prepared(op, lambda: fn(*args, **kwargs), lambda: ref(*args, **kwargs), check, args, kwargs)


def _merge(shape: dict, device: str, seed: int) -> Prepared:
    import torch

    from correctness.inputs import torch_dtype
    from correctness.tolerances import attention_out_atol

    fn, ref = kernel("merge_states"), reference("merge_states")
    g = torch.Generator().manual_seed(seed)
    s, t, h, d = shape["num_states"], shape["num_tokens"], shape["num_heads"], shape["head_dim"]
    outs = torch.randn((s, t, h, d), generator=g)
    lses = 3 * torch.randn((s, t, h), generator=g)
    # poison: a partial with lse -inf carries no keys and must contribute nothing, even NaN
    ts, hs = MERGE_EMPTY_STEP  # the cost model's minimum leaves these rows' out unread
    lses[0, ::ts, ::hs] = -float("inf")
    outs[0, ::ts, ::hs] = float("nan")
    outs, lses = outs.to(device, torch_dtype(shape["dtype"])), lses.to(device)

    def check(out, expected):
        # a convex combination of the partial outputs: bounded like an attention output by max |outs|
        v_max = float(torch.nan_to_num(outs.float(), nan=0.0).abs().max())
        return _result(out[0], expected[0], attention_out_atol(shape["dtype"], v_max), "merge_states.out")

    return Prepared("merge_states", lambda: fn(outs, lses), lambda: ref(outs, lses), check, (outs, lses), {})


def _write_kv(shape: dict, device: str, seed: int) -> Prepared:
    import torch

    from correctness.inputs import torch_dtype

    fn, ref = kernel("write_kv"), reference("write_kv")
    g = torch.Generator().manual_seed(seed)
    t, hkv, d, bs = shape["num_tokens"], shape["num_kv_heads"], shape["head_dim"], shape["block_size"]
    num_blocks = -(-t // bs) + 2
    key = torch.randn((t, hkv, d), generator=g).to(device, torch_dtype(shape["dtype"]))
    value = torch.randn((t, hkv, d), generator=g).to(device, torch_dtype(shape["dtype"]))
    slots = torch.randperm(num_blocks * bs, generator=g)[:t]
    slots[torch.randperm(t, generator=g)[:shape["skipped"]]] = -1
    slots = slots.to(device, torch.int64)
    kv_dtype = torch_dtype(shape["kv_dtype"])
    blank = torch.full((num_blocks, bs, hkv, d), float("nan")).to(device, kv_dtype)  # unwritten slots stay NaN
    caches = [blank.clone(), blank.clone()]

    def run():
        caches[0].copy_(blank)
        caches[1].copy_(blank)
        fn(key, value, caches[0], caches[1], slots)
        return caches[0], caches[1]

    def expected():
        kc, vc = blank.clone(), blank.clone()
        ref(key, value, kc, vc, slots)
        return kc, vc

    def check(out, exp):
        from correctness.assertions import describe_mismatch, max_abs_err, max_rel_err

        # a copy (or one exact RNE rounding to e4m3): bitwise equal, NaN in every slot not written
        errs = [max_abs_err(a.cpu(), e.cpu()) for a, e in zip(out, exp)]
        detail = "; ".join(filter(None, (describe_mismatch(a.cpu(), e.cpu(), atol=0.0, name=n)
                                         for a, e, n in zip(out, exp, ("k_cache", "v_cache")))))
        return max(errs) == 0.0, max(max_rel_err(a.cpu(), e.cpu()) for a, e in zip(out, exp)), detail

    return Prepared("write_kv", run, expected, check, (key, value, caches[0], caches[1], slots), {})


# ---------------------------------------------------------------------------------------------- GEMM / MoE

def _quantizer(name: str):
    try:
        return kernel(name)
    except Unavailable:
        return reference(name)  # the reference quantizers return CPU torch tensors too


def _to_device(w, device):
    import dataclasses

    import torch

    if isinstance(w, torch.Tensor):
        return w.to(device)
    fields = {f.name: getattr(w, f.name) for f in dataclasses.fields(w)}
    return type(w)(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in fields.items()})


def _abs_grouped(a64: np.ndarray, w64: np.ndarray, offs) -> np.ndarray:
    """``|a| @ |w_e|^T`` per group: the magnitude every rounding error of a GEMM is relative to."""
    y = np.zeros((a64.shape[0], w64.shape[1]))
    for e in range(w64.shape[0]):
        lo, hi = int(offs[e]), int(offs[e + 1])
        if hi > lo:
            y[lo:hi] = np.abs(a64[lo:hi]) @ np.abs(w64[e]).T
    return y


def _gemm(op: str, shape: dict, device: str, seed: int) -> Prepared:
    import torch

    from correctness.inputs import torch_dtype
    from kernels.reference._arrays import f64

    fn, ref = kernel(op), reference(op)
    g = torch.Generator().manual_seed(seed)
    t, n, k, e = shape["tokens"], shape["n"], shape["k"], shape["experts"]
    dt = torch_dtype(shape["dtype"])
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(shape["group_sizes"])]), dtype=torch.int32)
    a = torch.randn((t, k), generator=g).to(device, dt)
    w = (torch.randn((e, n, k), generator=g) * k ** -0.5).to(device)  # quantized where the kernels run
    gpu_fp8 = device == "cuda" and op == "grouped_gemm_fp8"
    if op == "grouped_gemm":
        weight = w.to(dt)
        w64 = f64(weight)
        args = (a, weight, offsets)
        kwargs = {}
        u_c = 0.0  # operands are already in the compute dtype
    elif op == "grouped_gemm_int4":
        weight = _quantizer("quantize_int4")(w, group_size=shape["group_size"])
        w64 = f64(reference("dequantize_int4")(weight))
        args, kwargs = (a, weight, offsets), {}
        u_c = 2 * cast_u(shape["dtype"])  # dequantized weight (and possibly its scale) cast to the compute dtype
    else:
        weight = _quantizer("quantize_fp8")(w, granularity=shape.get("granularity", "block"))
        a_fp8, a_scales = _quantizer("quantize_fp8_act")(a.float(), shape["group_size"])
        w64 = f64(reference("dequantize_fp8")(weight))
        a = a_fp8
        args, kwargs = (a_fp8, a_scales, weight, offsets), {"out_dtype": dt}
        u_c = 0.0  # e4m3 x e4m3 products are exact in float32
    args = tuple(_to_device(x, device) for x in args)
    if op == "grouped_gemm_fp8":
        a64 = f64(args[0]) * np.repeat(f64(args[1]), shape["group_size"], axis=1)[:, :k]
    else:
        a64 = f64(args[0])

    def check(out, expected):
        # |error| <= (u_c + (K + 4) * 2**-24) * (|a| @ |w|^T) + u_out * |y|: per-product rounding of the
        # operands to the compute dtype, float32 accumulation over K (+ scale multiplies), the output cast.
        # Hopper fp8 tensor cores accumulate with ~14 mantissa bits (DeepSeek-V3 sec. 3.3.2): 2**-14 there.
        acc_u = 2.0 ** -14 if gpu_fp8 else FP32_U
        mag = _abs_grouped(a64, w64, offsets.numpy())
        bound = (u_c + (k + 4) * acc_u) * mag + cast_u(shape["dtype"]) * np.abs(expected)
        atol = float(bound.max(initial=0.0))
        return _result(out, expected, atol, op)

    return Prepared(op, lambda: fn(*args, **kwargs), lambda: ref(*args, **kwargs), check, args, kwargs)


def routing(tokens: int, experts: int, top_k: int, seed: int = 0):
    """The catalogue's skewed routing as (topk_ids int32 [T, k], topk_weights float32 [T, k]); same ids as
    ``catalogue.expert_counts`` with the same seed. Weights: softmax over the chosen logits (renormalised)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((tokens, experts)) + rng.standard_normal(experts)[None, :]
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    chosen = np.take_along_axis(logits, ids, axis=1)
    wts = np.exp(chosen - chosen.max(axis=1, keepdims=True))
    wts /= wts.sum(axis=1, keepdims=True)
    assert list(np.bincount(ids.ravel(), minlength=experts)) == expert_counts(tokens, experts, top_k, seed)
    return ids.astype(np.int32), wts.astype(np.float32)


def _moe(shape: dict, device: str, seed: int) -> Prepared:
    import torch

    from correctness.inputs import torch_dtype
    from kernels.reference._arrays import f64
    from kernels.reference.moe import dequantized, silu

    fn, ref = kernel("fused_moe"), reference("fused_moe")
    g = torch.Generator().manual_seed(seed)
    t, h, i, e, k = shape["tokens"], shape["hidden"], shape["intermediate"], shape["experts"], shape["top_k"]
    dt = torch_dtype(shape["dtype"])
    x = torch.randn((t, h), generator=g).to(device, dt)
    w13 = (torch.randn((e, 2 * i, h), generator=g) * h ** -0.5).to(device)
    w2 = (torch.randn((e, h, i), generator=g) * i ** -0.5).to(device)
    fmt = shape["weight_format"]
    if fmt == "int4":
        q = _quantizer("quantize_int4")
        w13, w2 = q(w13, group_size=shape["group_size"]), q(w2, group_size=shape["group_size"])
    elif fmt == "fp8":
        q = _quantizer("quantize_fp8")
        w13, w2 = q(w13), q(w2)
    else:
        w13, w2 = w13.to(dt), w2.to(dt)
    ids, wts = routing(t, e, k, seed=0)
    args = tuple(_to_device(v, device) for v in (x, w13, w2, torch.from_numpy(ids), torch.from_numpy(wts)))
    # on a GPU (full model sizes) the float64 reference and the bound run on the first rows only: every output
    # row depends on its own token alone
    m = t if device == "cpu" else min(t, 8)
    ref_args = (args[0][:m], args[1], args[2], args[3][:m], args[4][:m])
    # float64 dequantized stacks, once per prepared case (a check after every timed call reuses them)
    weights64 = functools.cache(lambda: (dequantized(w13), dequantized(w2)))

    def check(out, expected):
        # Error chain through the two GEMMs; every term is a rounding the kernel may do differently from the
        # float64 definition. Roundings of distinct products/elements have independent signs, so they add as a
        # root-sum-square, bounded at 4 sigma (a coherent worst case over K terms exceeds |out| itself for two
        # chained GEMMs, and then no wrong kernel could fail). Worst-case (coherent) terms: float32 accumulation
        # ((K + 4) 2**-24 |a| @ |w|) and the output cast (cast_u |out|, 2u for bf16 under the interpreter).
        # gate/up: operand casts wq |x_k w_k| each (dequantized int4 weights cast to the compute dtype; 0 for
        # weights already in it and for exact e4m3 products); h = silu(g) * up moves by 1.1 e_g |up| + |silu(g)|
        # e_up (|silu'| <= 1.1), plus its own cast (u |h|), plus for fp8 one e4m3 step when re-quantized
        # (2 * 2**-4 |h|); the down projection carries those through w2 and adds its own operand casts.
        uc = cast_u(shape["dtype"])
        x64 = f64(x)
        w13d, w2d = weights64()
        wq = 2 * uc if fmt == "int4" else 0.0
        step = 2 * 2.0 ** -4 if fmt == "fp8" else 0.0
        out = out[:m]
        bound = np.zeros((m, h))
        for tok in range(m):
            for j in range(k):
                ex = int(ids[tok, j])
                xa, w1, w2e = x64[tok], w13d[ex], w2d[ex]
                gu = w1 @ xa
                e1 = 4 * wq * np.sqrt((w1 ** 2) @ (xa ** 2)) + (h + 4) * FP32_U * (np.abs(w1) @ np.abs(xa))
                gate, up = gu[:i], gu[i:]
                hh = silu(gate) * up
                dh = 1.1 * e1[:i] * np.abs(up) + np.abs(silu(gate)) * e1[i:] + (uc + step) * np.abs(hh)
                e2 = 4 * np.sqrt((w2e ** 2) @ (dh ** 2)) + 4 * wq * np.sqrt((w2e ** 2) @ (hh ** 2)) \
                    + (i + 4) * FP32_U * (np.abs(w2e) @ np.abs(hh))
                bound[tok] += float(wts[tok, j]) * e2
        bound += uc * np.abs(expected)
        return _result(out, expected, float(bound.max(initial=0.0)), "fused_moe")

    return Prepared("fused_moe", lambda: fn(*args), lambda: ref(*ref_args), check, args, {})


def prepare(op: str, shape: dict, device: str = "cpu", seed: int = 0) -> Prepared:
    """Inputs, kernel call, reference call and tolerance for one case of ``op``. Raises Unavailable."""
    if op in ("paged_decode", "paged_prefill"):
        return _attention(op, shape, device, seed)
    if op == "merge_states":
        return _merge(shape, device, seed)
    if op == "write_kv":
        return _write_kv(shape, device, seed)
    if op in ("grouped_gemm", "grouped_gemm_int4", "grouped_gemm_fp8"):
        return _gemm(op, shape, device, seed)
    if op == "fused_moe":
        return _moe(shape, device, seed)
    raise ValueError(f"op: unknown op {op!r}")


def available(op: str) -> str | None:
    """None when ``kernels.triton.<op>`` imports; otherwise the visible reason."""
    try:
        importlib.import_module("kernels.triton")
        kernel(op)
    except Unavailable as exc:
        return str(exc)
    return None
