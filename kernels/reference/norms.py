"""RMSNorm, its fused residual add and its fused fp8 quantization, and the rotary embedding, in float64 numpy.

- ``rms_norm``: ``y = x / sqrt(mean(x**2) + eps) * (weight_offset + weight)`` per row of ``x [T, H]``
  (Gemma's weights are stored as ``weight - 1``: ``weight_offset=1``).
- ``fused_add_rms_norm``: ``residual <- residual + x`` in place, stored in residual's dtype; the norm is of the
  new residual *as stored* (the value the next layer's add reads).
- ``rms_norm_quant_fp8``: the norm rounded once to float32, then ``quantize_fp8_act``'s dynamic per-token-group
  e4m3 quantization of that float32 row (its own reference, reused: the same bits by construction).
- ``rotary_embedding``: in place on ``q [T, Hq, D]`` and ``k [T, Hk, D]``; ``cos_sin_cache [max_position, rd]``
  holds ``cos(p * theta_i)`` in its first ``rd / 2`` columns and ``sin(p * theta_i)`` in the rest. NeoX rotates
  the pairs ``(x[i], x[i + rd/2])``, GPT-J the pairs ``(x[2i], x[2i+1])``, each by the angle of column i;
  dims past ``rd`` are untouched. Values are computed in float64 from the cache as stored and cast once.

The checks (``check_rms_norm``, ``check_rotary``) are shared with the Triton launchers: each raises
``ValueError`` naming the argument; only the position range reads device values (``validate``).
"""
from __future__ import annotations

import math

import numpy as np

from kernels.reference._arrays import f64
from kernels.validate import check_ndim, check_same_device, dtype_name, host_ints, is_torch, require

NORM_DTYPES = ("float16", "bfloat16", "float32")
ROPE_DTYPES = ("float16", "bfloat16", "float32")
INDEX_DTYPES = ("int32", "int64")


# ----------------------------------------------------------------------------------------------------------
# checks (the Triton launchers use the same ones)

def _float_scalar(value, name: str, *, minimum: float | None = None) -> float:
    require(isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool), name,
            f"must be a Python float, got {type(value).__name__}")
    require(math.isfinite(float(value)), name, f"must be finite, got {value}")
    if minimum is not None:
        require(float(value) >= minimum, name, f"must be >= {minimum}, got {value}")
    return float(value)


def check_rms_norm(x, weight, eps, weight_offset=0.0, *, residual=None, dtypes=NORM_DTYPES) -> tuple[int, int]:
    """``x [T, H]``, ``weight [H]`` (and ``residual [T, H]``): shapes, float dtypes, one device, ``eps >= 0`` and a
    finite ``weight_offset``. Reads no tensor value. Returns ``(T, H)``."""
    check_ndim(x, 2, "x", "[num_tokens, hidden]")
    check_ndim(weight, 1, "weight", "[hidden]")
    t, h = (int(s) for s in x.shape)
    require(int(weight.shape[0]) == h, "weight", f"has {int(weight.shape[0])} elements for hidden size {h}")
    if residual is not None:
        check_ndim(residual, 2, "residual", "[num_tokens, hidden]")
        require(tuple(residual.shape) == (t, h), "residual", f"shape {tuple(residual.shape)} differs from x {(t, h)}")
    if is_torch(x):
        require(dtype_name(x) in dtypes, "x", f"dtype must be one of {dtypes}, got {dtype_name(x)}")
        require(dtype_name(weight) in dtypes, "weight", f"dtype must be one of {dtypes}, got {dtype_name(weight)}")
        if residual is not None:
            require(dtype_name(residual) in dtypes, "residual",
                    f"dtype must be one of {dtypes}, got {dtype_name(residual)}")
    check_same_device(x=x, weight=weight, residual=residual)
    _float_scalar(eps, "eps", minimum=0.0)
    _float_scalar(weight_offset, "weight_offset")
    return t, h


def check_rotary(positions, q, k, cos_sin_cache, is_neox, rotary_dim, *, validate: bool = True,
                 dtypes=ROPE_DTYPES) -> int:
    """Shapes, dtypes, devices, ``is_neox`` a bool, ``rotary_dim`` (None or the cache's width: even, at most
    head_dim) and, with ``validate``, every position in ``[0, max_position)`` (the one host read). Returns rd."""
    check_ndim(positions, 1, "positions", "[num_tokens]")
    check_ndim(q, 3, "q", "[num_tokens, num_q_heads, head_dim]")
    check_ndim(k, 3, "k", "[num_tokens, num_kv_heads, head_dim]")
    check_ndim(cos_sin_cache, 2, "cos_sin_cache", "[max_position, rotary_dim]")
    t, _, d = (int(s) for s in q.shape)
    require(int(positions.shape[0]) == t, "positions", f"has {int(positions.shape[0])} entries for {t} tokens")
    require(int(k.shape[0]) == t, "k", f"has {int(k.shape[0])} tokens, q has {t}")
    require(int(k.shape[2]) == d, "k", f"head_dim {int(k.shape[2])} differs from q's {d}")
    rd = int(cos_sin_cache.shape[1])
    require(rd >= 2 and rd % 2 == 0, "cos_sin_cache", f"width (rotary_dim) must be even and >= 2, got {rd}")
    require(rd <= d, "cos_sin_cache", f"width (rotary_dim) {rd} exceeds head_dim {d}")
    if rotary_dim is not None:
        require(isinstance(rotary_dim, (int, np.integer)) and not isinstance(rotary_dim, bool) and rotary_dim == rd,
                "rotary_dim", f"must be None or the cache's width {rd}, got {rotary_dim!r}")
    require(isinstance(is_neox, (bool, np.bool_)), "is_neox", f"must be a bool, got {is_neox!r}")
    if is_torch(q):
        require(dtype_name(q) in dtypes, "q", f"dtype must be one of {dtypes}, got {dtype_name(q)}")
        require(dtype_name(k) == dtype_name(q), "k", f"dtype {dtype_name(k)} differs from q's {dtype_name(q)}")
        require(dtype_name(cos_sin_cache) in dtypes, "cos_sin_cache",
                f"dtype must be one of {dtypes}, got {dtype_name(cos_sin_cache)}")
    require(dtype_name(positions) in INDEX_DTYPES, "positions",
            f"dtype must be one of {INDEX_DTYPES}, got {dtype_name(positions)}")
    check_same_device(positions=positions, q=q, k=k, cos_sin_cache=cos_sin_cache)
    if validate and t:
        pos = host_ints(positions, "positions")
        bad = (pos < 0) | (pos >= int(cos_sin_cache.shape[0]))
        require(not bad.any(), "positions", f"position {pos[bad][0] if bad.any() else 0} is outside the cache's "
                f"[0, {int(cos_sin_cache.shape[0])})")
    return rd


# ----------------------------------------------------------------------------------------------------------
# definitions

def rms_scale(x64: np.ndarray, eps: float) -> np.ndarray:
    """``1 / sqrt(mean(x**2) + eps)`` per row of a float64 ``[T, H]``, as ``[T, 1]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)


def rms_norm(x, weight, *, eps, weight_offset=0.0):
    """float64 ``[T, H]``: ``x / sqrt(mean(x**2) + eps) * (weight_offset + weight)`` per row."""
    check_rms_norm(x, weight, eps, weight_offset)
    x64 = f64(x)
    with np.errstate(invalid="ignore"):  # eps 0 on an all-zero row: 0 * inf is NaN, as the formula says
        return x64 * rms_scale(x64, float(eps)) * (float(weight_offset) + f64(weight))[None, :]


def _store(dst, values: np.ndarray) -> None:
    """Write float64 ``values`` into ``dst`` (a torch tensor or numpy array, views kept), cast once."""
    if is_torch(dst):
        import torch  # deferred: numpy callers need no torch

        dst.copy_(torch.from_numpy(values).to(dst.device, dst.dtype))
    else:
        dst[...] = values.astype(dst.dtype)


def fused_add_rms_norm(x, residual, weight, *, eps):
    """``residual <- residual + x`` in place (the float64 sum rounded once to residual's dtype), then float64
    ``rms_norm`` of the new residual as stored (``weight_offset`` 0)."""
    check_rms_norm(x, weight, eps, residual=residual)
    _store(residual, f64(residual) + f64(x))
    return rms_norm(residual, weight, eps=eps)


def rms_norm_quant_fp8(x, weight, *, eps, group_size):
    """``quantize_fp8_act(float32(rms_norm(x, weight, eps=eps)), group_size)``: (float8_e4m3fn ``[T, H]``,
    float32 scales ``[T, ceil(H / group_size)]``), CPU torch tensors as ``quantize_fp8_act`` returns them."""
    from kernels.reference.quant import check_act_group, quantize_fp8_act

    _, h = check_rms_norm(x, weight, eps)
    check_act_group(group_size, h)
    return quantize_fp8_act(rms_norm(x, weight, eps=eps).astype(np.float32), group_size)


def rotate(x64: np.ndarray, cos: np.ndarray, sin: np.ndarray, is_neox: bool) -> np.ndarray:
    """The rotated first ``rd`` dims of float64 ``x [T, H, D]`` (``cos``/``sin`` ``[T, rd/2]``), dims past them kept."""
    half = cos.shape[-1]
    out = x64.copy()
    c, s = cos[:, None, :], sin[:, None, :]
    if is_neox:
        a, b = x64[..., :half], x64[..., half:2 * half]
        out[..., :half], out[..., half:2 * half] = a * c - b * s, b * c + a * s
    else:
        a, b = x64[..., 0:2 * half:2], x64[..., 1:2 * half:2]
        out[..., 0:2 * half:2], out[..., 1:2 * half:2] = a * c - b * s, b * c + a * s
    return out


def rotated(positions, q, k, cos_sin_cache, *, is_neox, rotary_dim=None) -> tuple[np.ndarray, np.ndarray]:
    """The exact float64 ``(q, k)`` after the rotation (the module docstring), before any store: what
    ``rotary_embedding`` rounds once into q's and k's dtype, and what an implementation is judged against."""
    rd = check_rotary(positions, q, k, cos_sin_cache, is_neox, rotary_dim)
    if int(q.shape[0]) == 0:
        return f64(q), f64(k)
    pos = host_ints(positions, "positions")
    rows = f64(cos_sin_cache[pos] if not is_torch(cos_sin_cache) else
               cos_sin_cache[_torch_index(pos, cos_sin_cache)])
    cos, sin = rows[:, :rd // 2], rows[:, rd // 2:]
    return rotate(f64(q), cos, sin, bool(is_neox)), rotate(f64(k), cos, sin, bool(is_neox))


def rotary_embedding(positions, q, k, cos_sin_cache, *, is_neox, rotary_dim=None):
    """Rotate ``q`` and ``k`` in place by each token's position (the module docstring); returns ``(q, k)``."""
    for t, exact in zip((q, k), rotated(positions, q, k, cos_sin_cache, is_neox=is_neox, rotary_dim=rotary_dim)):
        if int(t.shape[0]):
            _store(t, exact)
    return q, k


def _torch_index(pos: np.ndarray, like):
    import torch  # deferred: numpy callers need no torch

    return torch.from_numpy(pos).to(like.device)


def rope_cos_sin_cache(max_position: int, rotary_dim: int, base: float = 10000.0) -> np.ndarray:
    """The standard float64 ``[max_position, rotary_dim]`` cache: ``theta_i = base ** (-2i / rotary_dim)``,
    ``cos(p * theta_i)`` then ``sin(p * theta_i)``."""
    inv_freq = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    angles = np.arange(max_position, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)
