"""Inputs and tolerances of the norm and rotary-embedding ops (``kernels/ops/rms_norm.py`` and its siblings).

Inputs are poisoned: ``x`` (and ``residual``) are views of wider rows whose extra columns hold NaN, so a kernel
that reads past ``hidden`` or uses the wrong row stride gives NaN; q and k are views of one ``[T, (Hq + 2 Hk) * D]``
qkv buffer whose V part is NaN; the rows of ``cos_sin_cache`` at no token's position are NaN. Planted rows: an
all-zero row (eps keeps it finite: the output is 0), a row of magnitude ~1e-3 (mean(x**2) ~ 1e-6, where an eps of
1e-6 changes the result by a factor ~1.4: a kernel that drops eps fails there) and a row of magnitude ~1e3.

Tolerances, per element, against the float64 reference (``u`` is a dtype's unit roundoff):
- ``norm_rel(H)``: the float32 norm's relative error: the sum of H non-negative squares in any order ((H - 1) u
  plus the squares' own u each: H u), the division by H, ``+ eps``, the square root (halves its argument's
  relative error, adds u), the reciprocal, ``x * r``, ``offset + w`` and the product: ``(H / 2 + 6) u_f32``.
- ``norm_atol``: that relative error, plus the cast to the output dtype (``u_out`` of the result), plus half the
  output's smallest subnormal.
- the fused add: the kernel's stored residual may differ from the reference's (the float64 sum rounded once) by
  a float32 rounding and one more rounding to residual's dtype (``2 u_res + 2 u_f32`` relative); the norm of a row
  whose every element moved by a relative ``rho`` moves by ``2 rho`` relative (``x_i`` and the row's scale).
- fp8 output: a relative perturbation of ``y / scale`` far below e4m3's step moves the rounded value by at most one
  grid step at its magnitude (``e4m3_step``); a scale is ``fl32(amax / 448)``, amax perturbed like the norm.
- RoPE: ``a cos - b sin`` in float32 (two products and a sum, or an FMA: 3 u_f32 of ``(|a| + |b|)(|cos| + |sin|)``),
  then the cast; the dims past ``rotary_dim`` are copied: exactly 0.
"""
from __future__ import annotations

import numpy as np
import torch

from kernels.reference._arrays import f64
from kernels.reference.norms import rope_cos_sin_cache
from kernels.testing.paged import torch_dtype
from kernels.testing.tolerances import SUBNORMAL_ROUNDOFF, unit_roundoff

U32 = 2.0 ** -24
PAD = 16  # NaN columns past each row of x / residual in the padded layout


def _dtype(name) -> str:
    return str(name).replace("torch.", "")


# ------------------------------------------------------------------------------------------------- inputs

def norm_rows(t: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """float64 ``[t, h]``: signed rows of random magnitude (0.1 to 10); in a batch of 4 rows or more, row 0 all
    zero, row 1 ~1e-3 and row 2 ~1e3 (a smaller batch keeps only ordinary rows: a 1-row output all zero would
    prove nothing)."""
    x = rng.standard_normal((t, h)) * np.exp(rng.uniform(np.log(0.1), np.log(10.0), (t, 1)))
    if t >= 4:
        for row, scale in ((0, 0.0), (1, 1e-3), (2, 1e3)):
            x[row] = rng.standard_normal(h) * scale
    return x


def residual_rows(t: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """float64 ``[t, h]`` residual rows ~N(0, 4), zero where ``norm_rows`` plants its rows (a batch of 4 or more), so
    the new residual keeps x's zero, tiny and large rows (where eps matters)."""
    res = rng.standard_normal((t, h)) * 2.0
    if t >= 4:
        res[:3] = 0.0
    return res


def padded(values: np.ndarray, dtype, device, layout: str) -> torch.Tensor:
    """``values [T, H]`` in ``dtype``: contiguous, or (``layout="padded"``) the first H columns of ``[T, H + PAD]``
    rows whose extra columns are NaN."""
    t, h = values.shape
    if layout != "padded":
        return torch.from_numpy(values).to(device, torch_dtype(dtype))
    buf = torch.full((t, h + PAD), float("nan"), dtype=torch.float64)
    buf[:, :h] = torch.from_numpy(values)
    return buf.to(device, torch_dtype(dtype))[:, :h]


def norm_weight(h: int, rng: np.random.Generator, offset: float, dtype, device) -> torch.Tensor:
    """A weight whose ``offset + weight`` is ~1 +- 0.3 and signed somewhere (a Gemma weight is stored minus 1)."""
    w = 1.0 + 0.3 * rng.standard_normal(h) - offset
    w[:: 97] *= -1.0
    return torch.from_numpy(w).to(device, torch_dtype(dtype))


def qkv_views(t, hq, hk, d, dtype, device, rng):
    """q ``[T, Hq, D]`` and k ``[T, Hk, D]`` as views of one qkv buffer whose V part is NaN; returns (q, k, buf)."""
    buf = torch.full((t, (hq + 2 * hk) * d), float("nan"), dtype=torch.float64)
    buf[:, :(hq + hk) * d] = torch.from_numpy(rng.standard_normal((t, (hq + hk) * d)) * 2.0)
    buf = buf.to(device, torch_dtype(dtype))
    q = buf[:, :hq * d].view(t, hq, d)
    k = buf[:, hq * d:(hq + hk) * d].view(t, hk, d)
    return q, k, buf


def ragged_positions(num_tokens: int, max_position: int, rng: np.random.Generator) -> np.ndarray:
    """int64 positions of a ragged batch: chunks of 1 to 8 consecutive positions (a prefill chunk's or a decode's)
    starting anywhere in the cache, one at its last row, one past 2**16 where the cache is that long."""
    out, left = [], num_tokens
    while left:
        n = min(left, int(rng.integers(1, 9)))
        start = int(rng.integers(0, max_position - n + 1))
        out.extend(range(start, start + n))
        left -= n
    pos = np.array(out, dtype=np.int64)
    if num_tokens:
        pos[-1] = max_position - 1
    if num_tokens > 1 and max_position > 2 ** 16 + 1:
        pos[0] = 2 ** 16 + 1 + int(rng.integers(0, max_position - 2 ** 16 - 1))
    return pos


def poisoned_cache(positions: np.ndarray, max_position: int, rotary_dim: int, dtype, device,
                   base: float = 10000.0) -> torch.Tensor:
    """``[max_position, rotary_dim]``: the standard cos/sin rows at ``positions``, NaN in every other row."""
    cache = torch.full((max_position, rotary_dim), float("nan"), dtype=torch_dtype(dtype), device=device)
    used = np.unique(positions)
    inv_freq = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    angles = used[:, None].astype(np.float64) * inv_freq[None, :]
    rows = torch.from_numpy(np.concatenate([np.cos(angles), np.sin(angles)], axis=1))
    cache[torch.from_numpy(used).to(device)] = rows.to(device, torch_dtype(dtype))
    return cache


def full_cache(max_position: int, rotary_dim: int, dtype, device) -> torch.Tensor:
    return torch.from_numpy(rope_cos_sin_cache(max_position, rotary_dim)).to(device, torch_dtype(dtype))


# ------------------------------------------------------------------------------------------------- tolerances

def norm_rel(hidden: int) -> float:
    """The float32 norm's relative error bound (module docstring)."""
    return (hidden / 2 + 6) * U32


def norm_atol(expected, out_dtype, hidden: int, extra_rel: float = 0.0) -> np.ndarray:
    """Per element: ``(norm_rel + extra_rel) |y|``, the cast's ``u_out |y|`` and half the smallest subnormal."""
    y = np.abs(np.where(np.isfinite(f64(expected)), f64(expected), 0.0))
    rel = norm_rel(hidden) + extra_rel
    return (unit_roundoff(out_dtype) * (1 + rel) + rel) * y + SUBNORMAL_ROUNDOFF[_dtype(out_dtype)]


def residual_rel(residual_dtype) -> float:
    """The relative difference between two roundings of the same sum to residual's dtype (module docstring)."""
    return 2 * unit_roundoff(residual_dtype) + 2 * U32


def residual_atol(expected, residual_dtype) -> np.ndarray:
    r = np.abs(np.where(np.isfinite(f64(expected)), f64(expected), 0.0))
    return residual_rel(residual_dtype) * r + 2 * SUBNORMAL_ROUNDOFF[_dtype(residual_dtype)]


def e4m3_step(q) -> np.ndarray:
    """The e4m3 grid step above ``|q|`` (2**-9 below the smallest normal 2**-6)."""
    mag = np.abs(np.where(np.isfinite(f64(q)), f64(q), 0.0))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.maximum(mag, 2.0 ** -6)))
    return np.where(mag < 2.0 ** -6, 2.0 ** -9, 2.0 ** (e - 3))


def scale_atol(expected_scales, hidden: int) -> np.ndarray:
    s = np.abs(np.where(np.isfinite(f64(expected_scales)), f64(expected_scales), 0.0))
    return (norm_rel(hidden) + 3 * U32) * s


def rope_atol(x_before, cos_sin_rows, is_neox: bool, rotary_dim: int, out_dtype) -> np.ndarray:
    """Per element of the rotated ``[T, H, D]`` (module docstring); 0 past ``rotary_dim``."""
    x = np.abs(f64(x_before))
    cs = np.abs(f64(cos_sin_rows))
    half = rotary_dim // 2
    m_cs = (cs[:, :half] + cs[:, half:])[:, None, :]  # |cos| + |sin| per pair, [T, 1, rd/2]
    if is_neox:
        pair = x[..., :half] + x[..., half:rotary_dim]
        mag = np.concatenate([pair, pair], axis=-1) * np.concatenate([m_cs, m_cs], axis=-1)
    else:
        pair = x[..., 0:rotary_dim:2] + x[..., 1:rotary_dim:2]
        mag = np.repeat(pair * m_cs, 2, axis=-1)
    delta = 3 * U32 * mag
    u = unit_roundoff(out_dtype)
    atol = np.zeros(x.shape)
    atol[..., :rotary_dim] = u * (mag + delta) + delta + SUBNORMAL_ROUNDOFF[_dtype(out_dtype)]
    return atol
