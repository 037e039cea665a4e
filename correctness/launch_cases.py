"""One small call of every public op of ``kernels.triton``, shared by the launch-path tests.

Each builder takes a device and returns ``(op name, args, kwargs, hints)``; the hints are what a caller
prepares on the host before a ``validate=False`` call (``max_seq_len``, ``max_query_len``).
"""
from __future__ import annotations

import numpy as np
import torch

import kernels.triton as T
from kernels.testing.paged import make_paged_batch
from kernels.testing.moe_inputs import make_grouped_gemm_inputs, skewed_router_logits
from kernels.reference import quant as RQ
from kernels.reference.moe import route as reference_route

SEQ_LENS, Q_LENS = [5, 40, 17], [2, 7, 1]


def _attention(op, device, kv_dtype=None):
    b = make_paged_batch(SEQ_LENS, None if op == "paged_decode" else Q_LENS, num_q_heads=4, num_kv_heads=2,
                         head_dim=32, block_size=16, dtype="float16", kv_dtype=kv_dtype, seed=3, device=device)
    kwargs = dict(b.kwargs)
    if kv_dtype:  # tensor scales: the kernel must read them from device memory
        kwargs.update(k_scale=torch.tensor([0.5], device=device), v_scale=torch.tensor([2.0], device=device))
    if op == "paged_decode":
        return op, b.decode_args(), dict(kwargs, num_splits=None), {"max_seq_len": max(SEQ_LENS)}
    return op, b.prefill_args(), kwargs, {"max_query_len": max(Q_LENS), "max_seq_len": max(SEQ_LENS)}


def _write_kv(device, fp8):
    rng = np.random.default_rng(4)
    key = torch.from_numpy(rng.standard_normal((6, 2, 32))).to(device, torch.float16)
    value = torch.from_numpy(rng.standard_normal((6, 2, 32))).to(device, torch.float16)
    cdt = torch.float8_e4m3fn if fp8 else torch.float16
    k_cache = torch.zeros((4, 16, 2, 32), dtype=cdt, device=device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 17, -1, 40, 63, 0], dtype=torch.int64, device=device)
    kwargs = dict(k_scale=torch.tensor([0.25], device=device), v_scale=0.5) if fp8 else {}
    return "write_kv", (key, value, k_cache, v_cache, slots), kwargs, {}


def _merge(device):
    rng = np.random.default_rng(5)
    outs = torch.from_numpy(rng.standard_normal((3, 5, 4, 32))).to(device, torch.float16)
    lses = torch.from_numpy(rng.standard_normal((3, 5, 4))).to(device, torch.float32)
    lses[1, 2] = float("-inf")
    return "merge_states", (outs, lses), {}, {}


def _gemm(op, device):
    g = make_grouped_gemm_inputs(40, 6, 48, 256, "bfloat16", seed=6, device=device, sizes=[0, 17, 1, 0, 22, 0])
    if op == "grouped_gemm":
        return op, (g.a, g.w.to(torch.bfloat16), g.group_offsets), {}, {}
    if op == "grouped_gemm_int4":
        return op, (g.a, T.quantize_int4(g.w, 64, zero_point=True), g.group_offsets), {}, {}
    a_fp8, a_scales = RQ.quantize_fp8_act(g.a.cpu(), 128)
    return op, (a_fp8.to(device), a_scales.to(device), T.quantize_fp8(g.w), g.group_offsets), {}, {}


def _moe_routing(device, tokens=7, experts=6, top_k=2):
    rng = np.random.default_rng(7)
    logits = skewed_router_logits(tokens, experts, rng)
    ids, weights = reference_route(logits, top_k)
    return (torch.from_numpy(logits).to(device, torch.float32), torch.from_numpy(ids).to(device),
            torch.from_numpy(weights).to(device, torch.float32))


def _fused_moe(device, kind):
    logits, ids, weights = _moe_routing(device)
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((7, 256)) * 0.5).to(device, torch.bfloat16)
    w13 = torch.from_numpy(rng.standard_normal((6, 256, 256)) * 0.05).to(device, torch.float32)
    w2 = torch.from_numpy(rng.standard_normal((6, 256, 128)) * 0.05).to(device, torch.float32)
    if kind == "int4":
        w13, w2 = T.quantize_int4(w13, 128), T.quantize_int4(w2, 128)
    elif kind == "fp8":
        w13, w2 = T.quantize_fp8(w13), T.quantize_fp8(w2)
    else:
        w13, w2 = w13.to(torch.bfloat16), w2.to(torch.bfloat16)
    return "fused_moe", (x, w13, w2, ids, weights), {}, {}


def _weights(device):
    return torch.from_numpy(np.random.default_rng(9).standard_normal((2, 16, 128))).to(device, torch.float32)


CASES = {
    "paged_decode": lambda d: _attention("paged_decode", d),
    "paged_decode-fp8": lambda d: _attention("paged_decode", d, "float8_e4m3fn"),
    "paged_prefill": lambda d: _attention("paged_prefill", d),
    "paged_prefill-fp8": lambda d: _attention("paged_prefill", d, "float8_e4m3fn"),
    "merge_states": _merge,
    "write_kv": lambda d: _write_kv(d, False),
    "write_kv-fp8": lambda d: _write_kv(d, True),
    "quantize_fp8_act": lambda d: ("quantize_fp8_act", (_weights(d)[0].to(torch.bfloat16), 64), {}, {}),
    "quantize_int4": lambda d: ("quantize_int4", (_weights(d), 64), {"zero_point": True}, {}),
    "quantize_fp8": lambda d: ("quantize_fp8", (_weights(d),), {"granularity": "channel"}, {}),
    "dequantize_int4": lambda d: ("dequantize_int4", (T.quantize_int4(_weights(d), 32),), {}, {}),
    "grouped_gemm": lambda d: _gemm("grouped_gemm", d),
    "grouped_gemm_int4": lambda d: _gemm("grouped_gemm_int4", d),
    "grouped_gemm_fp8": lambda d: _gemm("grouped_gemm_fp8", d),
    "route": lambda d: ("route", (_moe_routing(d)[0], 2), {}, {}),
    "moe_permute": lambda d: ("moe_permute", (_moe_routing(d)[1], 6), {}, {}),
    "fused_moe": lambda d: _fused_moe(d, "dense"),
    "fused_moe-int4": lambda d: _fused_moe(d, "int4"),
    "fused_moe-fp8": lambda d: _fused_moe(d, "fp8"),
}
# ops whose checks read no device value at all (so validate=True reads nothing either)
READ_FREE = {"merge_states", "quantize_fp8_act", "dequantize_int4", "route"}
NO_KERNEL = {"quantize_int4", "quantize_fp8", "dequantize_int4", "moe_permute"}  # torch device ops only
