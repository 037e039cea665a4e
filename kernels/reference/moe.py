"""Mixture-of-experts routing and the fused MoE MLP, defined in float64 numpy.

- ``route`` (softmax or sigmoid top-k, DeepSeek's bias and groups) is ``kernels/reference/routing.py``.
- ``moe_permute``: a stable counting sort of the T*k (token, slot) pairs by expert.
- ``fused_moe``: the per-token loop of the contract, ``out[t] = sum_j w[t, j] * (w2[e] @ act(w13[e] @ x[t] +
  b13[e]) + b2[e])``, ``act`` SiLU-and-mul on (gate rows, up rows) or gpt-oss's ``swiglu_oai`` on interleaved
  (gate, up) pairs, the biases optional. With ``Fp8Weight`` weights the activations are quantized per token-group of 128 (``quantize_fp8_act``) before
  each of the two GEMMs, exactly as the kernel path does, so that quantization is part of the definition.

``check_fused_moe`` is the one validation both the reference and the Triton launcher run.
"""
from __future__ import annotations

import numpy as np

from kernels.reference._arrays import f64
from kernels.reference.gemm import check_bias
from kernels.reference.quant import (Mxfp4Weight, check_fp8_weight, check_int4_weight, check_mxfp4_weight,
                                     dequantize_fp8, dequantize_int4, dequantize_mxfp4, dequantized_expert,
                                     quantize_fp8_act)
from kernels.validate import check_ndim, check_same_device, dtype_name, host_ints, is_torch, require

ACTIVATIONS = ("silu", "swiglu_oai")
# gpt-oss's clamped SwiGLU (``swiglu_oai``): its modeling code's alpha and limit
SWIGLU_OAI_ALPHA = 1.702
SWIGLU_OAI_LIMIT = 7.0
MOE_DTYPES = ("float16", "bfloat16", "float32")
FP8_ACT_GROUP = 128  # per-token-group size of the on-the-fly activation quantization (DeepSeek-V3 style)


# ---------------------------------------------------------------------------------------------- permutation

def check_topk_shape(topk_ids, num_experts: int) -> tuple[int, int]:
    """topk_ids ``[T, k]`` of an integer dtype and ``num_experts >= 1``, reading no value: returns ``(T, k)``."""
    check_ndim(topk_ids, 2, "topk_ids", "[num_tokens, top_k]")
    require(isinstance(num_experts, (int, np.integer)) and num_experts >= 1, "num_experts",
            f"must be an int >= 1, got {num_experts!r}")
    if is_torch(topk_ids):
        require(not (topk_ids.is_floating_point() or topk_ids.is_complex()), "topk_ids",
                f"must be an integer tensor, got {topk_ids.dtype}")
    return int(topk_ids.shape[0]), int(topk_ids.shape[1])


def check_topk_ids(topk_ids, num_experts: int) -> np.ndarray:
    """topk_ids ``[T, k]`` integers in ``[0, num_experts)``; returns them on the host as int64."""
    check_topk_shape(topk_ids, num_experts)
    ids = host_ints(topk_ids, "topk_ids")
    if ids.size:
        require(bool((ids >= 0).all() and (ids < num_experts).all()), "topk_ids",
                f"expert ids must be in [0, {num_experts}), got range [{ids.min()}, {ids.max()}]")
    return ids


def moe_permute(topk_ids, num_experts: int):
    """``(sorted_index int64 [T*k], group_offsets int64 [E + 1])``.

    ``sorted_index[m]`` is a position in the flattened ``topk_ids`` (``token * k + slot``); positions are grouped
    by expert (expert 0 first) and keep their original order inside a group. Rows
    ``group_offsets[e] : group_offsets[e + 1]`` of the permuted batch belong to expert e.
    """
    flat = check_topk_ids(topk_ids, num_experts).reshape(-1)
    counts = np.bincount(flat, minlength=num_experts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # counting sort, written out: each expert's positions, in order
    cursor = offsets[:-1].copy()
    sorted_index = np.empty(flat.size, dtype=np.int64)
    for pos, e in enumerate(flat):
        sorted_index[cursor[e]] = pos
        cursor[e] += 1
    return sorted_index, offsets


# ---------------------------------------------------------------------------------------------- fused MoE

def weight_kind(w) -> str:
    """"int4" (an ``Int4Weight``), "fp8" (an ``Fp8Weight``), "mxfp4" (an ``Mxfp4Weight``) or "dense" (an array or
    tensor)."""
    if hasattr(w, "qweight"):
        return "int4"
    if isinstance(w, Mxfp4Weight):
        return "mxfp4"
    if hasattr(w, "granularity") and hasattr(w, "data"):
        return "fp8"
    return "dense"


def weight_shape(w) -> tuple[int, int, int]:
    """The logical ``[E, N, K]`` of a dense, int4 or fp8 expert stack (a 2-D weight is E = 1)."""
    kind = weight_kind(w)
    if kind in ("int4", "mxfp4"):
        e, n, half_k = (int(s) for s in _as3d_shape((w.qweight if kind == "int4" else w.data).shape))
        return e, n, 2 * half_k
    data = w.data if kind == "fp8" else w
    return _as3d_shape(data.shape)


def _as3d_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    return (1, *shape) if len(shape) == 2 else shape


def check_fused_moe(x, w13, w2, topk_ids, topk_weights, activation="silu", validate=True, w13_bias=None,
                    w2_bias=None):
    """Validate a fused_moe call. Returns ``(T, H, I, E, k, kind, ids_host)``; raises ValueError naming the argument.
    ``w13_bias`` / ``w2_bias``: None or float32 ``[E, 2I]`` / ``[E, H]``.

    ``validate=False`` skips the id range check (the only read of device values); ``ids_host`` is then None."""
    require(activation in ACTIVATIONS, "activation", f"must be one of {ACTIVATIONS}, got {activation!r}")
    check_ndim(x, 2, "x", "[num_tokens, hidden]")
    num_tokens, hidden = (int(s) for s in x.shape)
    kind = weight_kind(w13)
    require(weight_kind(w2) == kind, "w2",
            f"is a {weight_kind(w2)} weight but w13 is {kind}: both must be the same kind")
    for name, w in (("w13", w13), ("w2", w2)):
        if kind == "int4":

            check_int4_weight(w, name)
        elif kind == "fp8":

            check_fp8_weight(w, name)
        elif kind == "mxfp4":
            check_mxfp4_weight(w, name)
        else:
            check_ndim(w, 3, name, "[E, N, K] expert stack")
    e13, n13, k13 = weight_shape(w13)
    e2, n2, k2 = weight_shape(w2)
    require(k13 == hidden, "w13", f"has K = {k13}, must equal x's hidden size {hidden} ([E, 2I, H])")
    require(n13 % 2 == 0 and n13 >= 2, "w13", f"has N = {n13}, must be 2 * intermediate (gate rows then up rows)")
    inter = n13 // 2
    require(e2 == e13, "w2", f"has {e2} experts, w13 has {e13}")
    require(n2 == hidden, "w2", f"has N = {n2}, must equal the hidden size {hidden} ([E, H, I])")
    require(k2 == inter, "w2", f"has K = {k2}, must equal the intermediate size {inter} (w13's N / 2)")
    check_bias(w13_bias, e13, n13, "w13_bias")
    check_bias(w2_bias, e13, hidden, "w2_bias")
    check_ndim(topk_weights, 2, "topk_weights", "[num_tokens, top_k]")
    ids = check_topk_ids(topk_ids, e13) if validate else None
    ids_shape = check_topk_shape(topk_ids, e13)
    require(ids_shape[0] == num_tokens, "topk_ids", f"has {ids_shape[0]} rows for {num_tokens} tokens in x")
    require(tuple(topk_weights.shape) == ids_shape, "topk_weights",
            f"shape {tuple(topk_weights.shape)} differs from topk_ids {ids_shape}")
    require(ids_shape[1] >= 1, "topk_ids", "needs top_k >= 1 columns")
    if is_torch(x):
        xd = dtype_name(x)
        require(xd in MOE_DTYPES, "x", f"dtype must be one of {MOE_DTYPES}, got {xd}")
        require(dtype_name(topk_weights) in MOE_DTYPES, "topk_weights",
                f"must be floating point, got {dtype_name(topk_weights)}")
        if kind == "dense":
            for name, w in (("w13", w13), ("w2", w2)):
                require(dtype_name(w) == xd, name, f"dtype {dtype_name(w)} differs from x's dtype {xd}")
        check_same_device(x=x, topk_ids=topk_ids, topk_weights=topk_weights,
                          w13={"int4": getattr(w13, "qweight", None), "fp8": getattr(w13, "data", None),
                               "mxfp4": getattr(w13, "data", None)}.get(kind, w13),
                          w2={"int4": getattr(w2, "qweight", None), "fp8": getattr(w2, "data", None),
                              "mxfp4": getattr(w2, "data", None)}.get(kind, w2),
                          w13_bias=w13_bias, w2_bias=w2_bias)
    return num_tokens, hidden, inter, e13, ids_shape[1], kind, ids


def dequantized(w) -> np.ndarray:
    """A dense, int4, fp8 or MXFP4 expert stack as float64 ``[E, N, K]``."""
    kind = weight_kind(w)
    if kind == "int4":

        out = f64(dequantize_int4(w))
    elif kind == "fp8":

        out = f64(dequantize_fp8(w))
    elif kind == "mxfp4":
        out = f64(dequantize_mxfp4(w))
    else:
        out = f64(w)
    return out.reshape(weight_shape(w))


def round_to(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` as the kernel stores it: rounded to float32 (its accumulator), then to ``dtype``, back in float64."""
    if dtype is None or dtype_name_of(dtype) == "float64":
        return a
    import torch  # deferred: the references are numpy; torch only for a tensor argument

    name = dtype_name_of(dtype)
    require(name in MOE_DTYPES, "intermediate_dtype", f"must be None, float64 or one of {MOE_DTYPES}, got {name}")
    t = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
    return t.to(getattr(torch, name)).to(torch.float64).numpy()


def dtype_name_of(dtype) -> str:
    return str(dtype).replace("torch.", "")


def fp8_act(a: np.ndarray) -> np.ndarray:
    """``a [M, K]`` after the per-token-group (128) fp8 quantization the fp8 path applies, dequantized, float64."""
    a_fp8, a_scales = quantize_fp8_act(a, FP8_ACT_GROUP)
    a_fp8, a_scales = f64(a_fp8), f64(a_scales)
    return a_fp8 * np.repeat(a_scales, FP8_ACT_GROUP, axis=1)[:, : a.shape[1]]


def silu(g: np.ndarray) -> np.ndarray:
    """``g * sigmoid(g)``, overflow-free for large |g|."""
    return g * (0.5 * (1.0 + np.tanh(0.5 * g)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, overflow-free for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def swiglu_oai(gu: np.ndarray) -> np.ndarray:
    """gpt-oss's activation on ``gu [M, 2I]`` (gate and up interleaved: ``gate = gu[:, 0::2]``, ``up = gu[:, 1::2]``):
    ``gate = min(gate, 7)``, ``up = clamp(up, -7, 7)``, ``gate * sigmoid(1.702 * gate) * (up + 1)``, ``[M, I]``.
    NaN stays NaN (``np.minimum`` and ``np.clip`` propagate it)."""
    gate = np.minimum(gu[:, 0::2], SWIGLU_OAI_LIMIT)
    up = np.clip(gu[:, 1::2], -SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT)
    return gate * sigmoid(SWIGLU_OAI_ALPHA * gate) * (up + 1.0)


def activate(gu: np.ndarray, activation: str) -> np.ndarray:
    """``h [M, I]`` from ``gu [M, 2I]``: ``silu(gate) * up`` with gate rows then up rows (``"silu"``), or
    ``swiglu_oai`` on interleaved pairs."""
    if activation == "swiglu_oai":
        return swiglu_oai(gu)
    inter = gu.shape[1] // 2
    return silu(gu[:, :inter]) * gu[:, inter:]


def expert_mlp(x: np.ndarray, w13_e: np.ndarray, w2_e: np.ndarray, *, fp8: bool, intermediate_dtype=None,
               activation: str = "silu", b13_e=None, b2_e=None):
    """One expert on rows ``x [M, H]``: ``(y [M, H], h [M, I])`` with ``h = act(x @ w13.T + b13)``,
    ``y = h @ w2.T + b2`` (the biases optional), float64."""
    a = fp8_act(x) if fp8 else x
    gu = a @ w13_e.T
    if b13_e is not None:
        gu = gu + b13_e
    h = round_to(activate(gu, activation), intermediate_dtype)
    a2 = fp8_act(h) if fp8 else h
    y = a2 @ w2_e.T
    return (y if b2_e is None else y + b2_e), h


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation: str = "silu", w13_bias=None, w2_bias=None,
              intermediate_dtype=None, batch_invariant=False):
    """``out[t] = sum_j topk_weights[t, j] * (w2[e] @ act(w13[e] @ x[t] + w13_bias[e]) + w2_bias[e])``.

    ``x [T, H]``; ``w13 [E, 2I, H]``, ``w2 [E, H, I]``: dense, ``Int4Weight``, ``Fp8Weight`` (then the activation
    entering each GEMM is quantized per token-group of 128 first) or ``Mxfp4Weight``. ``activation="silu"``:
    ``silu(gate) * up`` with w13's rows 0..I-1 the gate and I..2I-1 the up projection; ``"swiglu_oai"``
    (gpt-oss): gate and up interleaved along w13's rows (even rows gate, odd rows up), clamped at 7, ``gate *
    sigmoid(1.702 gate) * (up + 1)``. ``w13_bias [E, 2I]``, ``w2_bias [E, H]``: float32 or None.
    ``intermediate_dtype`` (beyond the contract, for parity tests): round the intermediate ``h`` to float32 and
    then to this dtype before the down projection, as a kernel that stores ``h`` in that dtype does.
    Returns float64 ``[T, H]``.
    """
    num_tokens, hidden, _, _, _, kind, ids = check_fused_moe(
        x, w13, w2, topk_ids, topk_weights, activation, w13_bias=w13_bias, w2_bias=w2_bias)
    xs, weights = f64(x), f64(topk_weights)
    b13 = None if w13_bias is None else f64(w13_bias)
    b2 = None if w2_bias is None else f64(w2_bias)
    out = np.zeros((num_tokens, hidden))
    for e in np.unique(ids):  # every routed expert once: its weights dequantized once, an unrouted one never read
        tok, slot = np.nonzero(ids == e)  # the (token, slot) pairs routed to e; each row computed on its own
        y, _ = expert_mlp(xs[tok], dequantized_expert(w13, e), dequantized_expert(w2, e), fp8=kind == "fp8",
                          intermediate_dtype=intermediate_dtype, activation=activation,
                          b13_e=None if b13 is None else b13[e], b2_e=None if b2 is None else b2[e])
        np.add.at(out, tok, weights[tok, slot][:, None] * y)  # out[t] += topk_weights[t, j] * y
    return out
