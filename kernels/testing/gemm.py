"""Named GEMM shapes for the registry (``kernels/ops/grouped_gemm*.py``): poisoned inputs, the call, the
derived tolerance.

Inputs: ``make_grouped_gemm_inputs`` (signed activations with outlier channels, signed weights; skewed groups
unless the shape gives ``group_sizes``); the weights of every expert that gets no row are NaN (dense values,
int4 scales, fp8 data), so a kernel that touches an empty group's weights fails. Quantized with the
reference quantizers (the definition, whatever implementation is judged). Tolerance per output element from
``grouped_gemm_tol``: float32 accumulation over K terms plus the scale multiplies (``gamma_(K + r)`` of
``|a| @ |w|``) and the output cast (``u * |y|``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from kernels import reference as R
from kernels import runtime
from kernels.ops import Case, Inputs
from kernels.ops.models import GPT_OSS_20B, GPT_OSS_120B, MIXTRAL, QWEN3_MOE, gemm_shape
from kernels.reference.quant import MX_BLOCK, Fp8Weight, Int4Weight, Mxfp4Weight
from kernels.testing.moe_inputs import make_grouped_gemm_inputs
from kernels.testing.paged import torch_dtype
from kernels.testing.tolerances import unit_roundoff
from kernels.testing.tolerances_gemm import GPU_ACCUM_UNIT, extra_roundings, grouped_gemm_tol
from kernels.triton import quant as Q
from roofline import cost as C

FP8_BLOCK = (128, 128)


def accum_unit(operand_dtype: str) -> float:
    """float32 accumulation: u32 (interpreter, or a GPU's CUDA cores); inside a tensor-core MMA the GPU keeps
    fewer bits (``GPU_ACCUM_UNIT``, 2**-14 for fp8 on Hopper)."""
    return unit_roundoff("float32") if runtime.interpreter_enabled() else GPU_ACCUM_UNIT[operand_dtype]


def padded_mx_scales(weight: Mxfp4Weight) -> Mxfp4Weight:
    """The weight with its scales moved into a ``[E, N, round_up(K / 32 + 1, 4)]`` buffer of 255 (the E8M0 NaN)
    and seen through a ``[E, N, K / 32]`` view: every row's scales are followed by at least one NaN scale byte
    (and padded to a multiple of 4, as vLLM pads them for triton_kernels), so a kernel that reads a scale past a
    row's end gets NaN there, never the next row's first scale."""
    e, n, g = (int(x) for x in weight.scales.shape)
    buf = torch.full((e, n, -(-(g + 1) // 4) * 4), 255, dtype=torch.uint8, device=weight.scales.device)
    buf[..., :g] = weight.scales
    return Mxfp4Weight(weight.data, buf[..., :g])


def mx_bias(num_experts: int, n: int, rng: np.random.Generator, device) -> torch.Tensor:
    """A float32 per-expert bias ``[E, N]`` of the outputs' magnitude (std 0.5), signed."""
    return torch.from_numpy(rng.standard_normal((num_experts, n)) * 0.5).to(torch.float32).to(device)


def build_gemm(op: str, kind: str, shape: dict, device: str, seed: int) -> Inputs:
    """The op's arguments from ``make_grouped_gemm_inputs`` (skewed routing, float32 master weights), quantized
    on ``device`` one expert at a time (``quantize_on_device``: bitwise the reference quantizers' values), with
    the weights of every expert that has no row poisoned (NaN). Nothing is dequantized here: the reference and the
    tolerance each dequantize the experts with rows, one at a time."""
    t, e, n, k = shape["tokens"], shape["experts"], shape["n"], shape["k"]
    inp = make_grouped_gemm_inputs(t, e, n, k, shape["dtype"], seed=seed, sizes=shape.get("group_sizes"),
                                   weights_device=device)  # activations on the host (fp8: quantized there)
    empty = torch.from_numpy(np.flatnonzero(np.asarray(inp.sizes) == 0)).to(device)
    offs = inp.group_offsets.to(device)
    kwargs = {"out_dtype": torch_dtype(shape["out_dtype"])} if shape.get("out_dtype") else {}
    if kind == "bf16":
        w = inp.w.to(inp.a.dtype)
        w[empty] = float("nan")
        return Inputs(op, shape, (inp.a.to(device), w.to(device), offs), kwargs)
    if kind == "int4":
        w = quantize_on_device(inp.w, device, lambda w_e, **kw: Q.quantize_int4(
            w_e, shape["group_size"], shape.get("zero_point", False), **kw))
        w.scales[empty] = float("nan")
        return Inputs(op, shape, (inp.a.to(device), w, offs), kwargs)
    if kind == "mxfp4":  # scales past each row's end and every empty expert's scales: 255, the NaN scale
        w = padded_mx_scales(quantize_on_device(inp.w, device, Q.quantize_mxfp4))
        w.scales[empty] = 255
        if shape.get("bias", True):
            bias = mx_bias(e, n, np.random.default_rng(seed + 1), device)
            bias[empty] = float("nan")
            kwargs["bias"] = bias
        return Inputs(op, shape, (inp.a.to(device), w, offs), kwargs)
    w = quantize_on_device(inp.w, device, lambda w_e, **kw: Q.quantize_fp8(
        w_e, shape.get("granularity", "block"), FP8_BLOCK, **kw))
    w.data[empty] = float("nan")
    a_fp8, a_scales = R.quantize_fp8_act(inp.a.float(), shape["group_size"])
    a64 = a_fp8.double().numpy() * np.repeat(a_scales.double().numpy(), shape["group_size"], axis=1)[:, :k]
    out_dtype = torch_dtype(shape.get("out_dtype") or shape["dtype"])
    return Inputs(op, shape, (a_fp8.to(device), a_scales.to(device), w, offs), {"out_dtype": out_dtype},
                  {"a64": a64})


QUANTIZE_CHUNK_ELEMENTS = 2 ** 22  # weights per quantizer call in quantize_on_device (32 MB of float64)


def quantize_on_device(w: torch.Tensor, device, quantize):
    """``quantize`` applied to each expert of the float32 master stack ``w`` on ``device``, results stacked.

    ``quantize`` is one of ``kernels.triton.quant``'s quantizers (torch ops on the tensor's device, bitwise equal
    to the reference quantizers: ``test_quantize_int4.py``, ``test_quantize_fp8.py``), called with
    ``validate=False`` (the masters are finite by construction; no host read, so a ``meta`` run passes too).
    A few experts at a time (as many as fit ``QUANTIZE_CHUNK_ELEMENTS``, at least one): the float64 working copy
    is a chunk, not the stack (a Mixtral w13 is 7.5 GB whole), a small stack of many experts is one call, and on a
    GPU the quantization of a full-size case takes milliseconds instead of minutes of host float64. Every
    quantizer's granules lie inside one expert, so the chunking changes no bit. Whatever the quantizer, the
    reference dequantizes exactly the weight it is given, so a judged output's definition does not depend on how
    its inputs were quantized."""
    e, n, k = (int(x) for x in w.shape)
    step = max(1, QUANTIZE_CHUNK_ELEMENTS // max(n * k, 1))
    parts = [quantize(w[i:i + step].to(device), validate=False) for i in range(0, e, step)]
    return dataclasses.replace(parts[0], **{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                            for f in dataclasses.fields(parts[0])
                                            if isinstance(getattr(parts[0], f.name), torch.Tensor)})


def to_device(x, device):
    """A tensor, or every tensor field of an ``Int4Weight`` / ``Fp8Weight``, on ``device``."""
    if not dataclasses.is_dataclass(x):
        return x.to(device)
    return dataclasses.replace(x, **{f.name: getattr(x, f.name).to(device) for f in dataclasses.fields(x)
                                     if isinstance(getattr(x, f.name), torch.Tensor)})


def gemm_call(fn, inputs: Inputs) -> dict:
    return {"y": fn(*inputs.args, **inputs.kwargs)}


def gemm_tolerance(kind: str, inputs: Inputs, expected: dict) -> dict:
    args = inputs.args
    offs = args[-1].cpu().numpy()
    weight = args[-2]  # dense, Int4Weight or Fp8Weight: dequantized per expert with rows by the bound
    ref = np.asarray(expected["y"], dtype=np.float64)
    if kind == "fp8":
        tol = grouped_gemm_tol(inputs.data["a64"], weight, offs, inputs.kwargs["out_dtype"],
                               extra_roundings=extra_roundings(kind), accum_unit=accum_unit("float8_e4m3fn"))
    else:
        a = args[0]
        out_dtype = inputs.kwargs.get("out_dtype", a.dtype)
        dtype = str(a.dtype).replace("torch.", "")
        tol = grouped_gemm_tol(a, weight, offs, out_dtype, extra_roundings=extra_roundings(kind),
                               accum_unit=accum_unit(dtype), bias=inputs.kwargs.get("bias"))
    return {"y": tol["atol"] + tol["rtol"] * np.abs(ref)}


def gemm_features(args, kwargs) -> set:
    feats = {f"dtype={str(args[0].dtype).replace('torch.', '')}"}
    if kwargs.get("batch_invariant"):
        feats.add("batch_invariant")
    return feats


def gemm_cost(kind: str, s: dict):
    if kind == "mxfp4":
        return C.grouped_gemm_mxfp4(s["group_sizes"], s["n"], s["k"], bias=s.get("bias", True), dtype=s["dtype"],
                                    out_dtype=s.get("out_dtype"))
    if kind == "bf16":
        return C.grouped_gemm(s["group_sizes"], s["n"], s["k"], dtype=s["dtype"])
    if kind == "int4":
        return C.grouped_gemm_int4(s["group_sizes"], s["n"], s["k"], group_size=s["group_size"], dtype=s["dtype"])
    return C.grouped_gemm_fp8(s["group_sizes"], s["n"], s["k"], act_group_size=s["group_size"],
                              granularity=s.get("granularity", "block"), out_dtype=s["dtype"])


def mxfp4_cases(op: str) -> list:
    """gpt-oss's expert GEMMs (H = I = 2880, top-4, per-expert biases): w13 (N = 2I = 5760) and w2 (N = 2880) at
    decode-sized T (the MXFP4 traffic goal) and a prefill-sized T. Counted at small shapes: N a multiple of every
    tile width, K a few MX blocks with E and top-k the model's."""
    G, G20, _gemm = GPT_OSS_120B, GPT_OSS_20B, gemm_shape
    w13 = dict(n=2 * G["intermediate"], k=G["hidden"])
    w2 = dict(n=G["hidden"], k=G["intermediate"])
    small = dict(n=256, k=256)
    return [Case(op, "gpt-oss-120b/mxfp4-w13/decode-t16", _gemm(16, G["experts"], 4, **w13),
                 _gemm(4, G["experts"], 4, **small), True, "mxfp4_traffic", tracked=True),
            Case(op, "gpt-oss-120b/mxfp4-w2/decode-t16", _gemm(16, G["experts"], 4, **w2),
                 _gemm(4, G["experts"], 4, **small), False, "mxfp4_traffic"),
            Case(op, "gpt-oss-20b/mxfp4-w13/decode-t16", _gemm(16, G20["experts"], 4, **w13),
                 _gemm(8, G20["experts"], 4, **small), False, "mxfp4_traffic"),
            # small: 144 tokens x top-4 = 576 rows over 32 experts, past the decode regime's 16 rows per expert, so
            # the counted launch runs the prefill tiles as the full size does (test_report_truth.py)
            Case(op, "gpt-oss-20b/mxfp4-w13/prefill-t2k", _gemm(2048, G20["experts"], 4, **w13),
                 _gemm(144, G20["experts"], 4, **small))]


def gemm_cases(op: str, kind: str) -> list:
    """The report's Mixtral / Qwen3 expert GEMMs: decode-sized T (the traffic goal) and a prefill-sized T."""
    if kind == "mxfp4":
        return mxfp4_cases(op)
    M, Q, _gemm = MIXTRAL, QWEN3_MOE, gemm_shape
    extra = {"int4": dict(group_size=128), "fp8": dict(group_size=128, granularity="block"), "bf16": {}}[kind]
    gs = extra.get("group_size")
    ex = {k: v for k, v in extra.items() if k != "group_size"}
    w13, w2 = dict(n=2 * M["intermediate"], k=M["hidden"]), dict(n=M["hidden"], k=M["intermediate"])
    # counted shapes: N a multiple of every tile width a kernel may pick (A is re-read once per N tile, so the
    # counted/min ratio only depends on N through ceil(N / BLOCK_N) rounding), K a few scale groups
    sm13, sm2 = dict(n=256, k=256), dict(n=256, k=384)
    out = [Case(op, f"mixtral/{kind}-w13/decode-t16", _gemm(16, M["experts"], 2, **w13, group_size=gs, **ex),
                _gemm(16, M["experts"], 2, **sm13, group_size=gs, **ex), kind != "bf16", "gemm_traffic",
                tracked=True)]
    if kind == "bf16":
        return out
    out += [Case(op, f"mixtral/{kind}-w2/decode-t16", _gemm(16, M["experts"], 2, **w2, group_size=gs, **ex),
                 _gemm(16, M["experts"], 2, **sm2, group_size=gs, **ex), False, "gemm_traffic",
                 tracked=kind == "int4"),
            Case(op, f"mixtral/{kind}-w13/prefill-t2k", _gemm(2048, M["experts"], 2, **w13, group_size=gs, **ex),
                 _gemm(96, M["experts"], 2, **sm13, group_size=gs, **ex)),
            Case(op, f"qwen3-30b-a3b/{kind}-w13/decode-t64",
                 _gemm(64, Q["experts"], 8, n=2 * Q["intermediate"], k=Q["hidden"], group_size=gs, **ex),
                 _gemm(8, 16, 8, **sm13, group_size=gs, **ex), False, "gemm_traffic")]
    return out




def gemm_full_inputs(kind: str, s: dict, big, stride0: bool) -> tuple[tuple, dict]:
    """A grouped GEMM at a catalogue shape that costs (almost) no memory (``OpSpec.full_inputs``): activations
    and weights from ``big``; the int4 scales stride-0 ones too when ``stride0``, else real ones; the groups the
    shape's ``group_sizes``."""
    t, n, k, e = s["tokens"], s["n"], s["k"], s["experts"]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(s["group_sizes"])]), dtype=torch.int32)
    if kind == "bf16":
        return (big((t, k), torch.bfloat16), big((e, n, k), torch.bfloat16), offsets), {}
    if kind == "mxfp4":
        w = Mxfp4Weight(big((e, n, k // 2), torch.uint8), big((e, n, k // MX_BLOCK), torch.uint8))
        bias = {"bias": torch.zeros((e, n), dtype=torch.float32)} if s.get("bias", True) else {}
        return (big((t, k), torch.bfloat16), w, offsets), bias
    if kind == "int4":
        g = s["group_size"]
        w = Int4Weight(big((e, n, k // 2), torch.uint8),
                       torch.ones((1, 1, 1), dtype=torch.float32).expand(e, n, k // g) if stride0
                       else torch.ones((e, n, k // g)), None, g)
        return (big((t, k), torch.bfloat16), w, offsets), {}
    w = Fp8Weight(big((e, n, k), torch.float8_e4m3fn),
                  torch.ones((e, -(-n // 128), -(-k // 128)), dtype=torch.float32), "block", (128, 128))
    scales = torch.ones((t, -(-k // s["group_size"])), dtype=torch.float32)
    return (big((t, k), torch.float8_e4m3fn), scales, w, offsets), {"out_dtype": torch.bfloat16}


def gemm_row_shape(s: dict) -> dict:
    """A report row's GEMM shape."""
    return dict(tokens=s["tokens"], n=s["n"], k=s["k"], experts=s["experts"], group_size=s["group_size"],
                active_experts=s["active_experts"], top_k=s["top_k"])


def gemm_launch_case(kind: str, device) -> tuple[tuple, dict, dict]:
    """A small grouped GEMM for the launch-path tests (``OpSpec.launch_cases``): ``(args, kwargs, hints)``, empty
    and one-row groups included."""
    g = make_grouped_gemm_inputs(40, 6, 48, 256, "bfloat16", seed=6, device=device, sizes=[0, 17, 1, 0, 22, 0])
    if kind == "bf16":
        return (g.a, g.w.to(torch.bfloat16), g.group_offsets), {}, {}
    if kind == "int4":
        return (g.a, Q.quantize_int4(g.w, 64, zero_point=True), g.group_offsets), {}, {}
    if kind == "mxfp4":
        bias = mx_bias(6, 48, np.random.default_rng(6), device)
        return (g.a, padded_mx_scales(Q.quantize_mxfp4(g.w)), g.group_offsets), {"bias": bias}, {}
    a_fp8, a_scales = R.quantize_fp8_act(g.a.cpu(), 128)
    return (a_fp8.to(device), a_scales.to(device), Q.quantize_fp8(g.w), g.group_offsets), {}, {}
