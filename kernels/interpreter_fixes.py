"""Triton's interpreter made to compute what a GPU computes for bfloat16 matmuls, casts and arithmetic.

The interpreter (triton 3.6 to 3.9) keeps a bfloat16 tensor as its uint16 bits, and its builder methods
get that wrong; ``install()`` replaces them on ``triton.runtime.interpreter.InterpreterBuilder``, the class every
interpreted kernel builds through, whoever wrote the kernel (this project's, vLLM's, a user's):

- ``create_dot`` hands those bits to ``np.matmul`` as integers (a bfloat16 ``tl.dot`` is garbage), and gives every
  other dtype to numpy's BLAS, whose result for one row changes with the row's place in the tile (its
  micro-kernels sum K in another order at the tile's edges), which a GPU's MMA does not do. Replaced for every
  floating dot with a float32 or float64 accumulator: both operands are widened exactly to the accumulator's type
  (bfloat16 by its bits, float8 through float16 as triton does), each product is formed exactly (a bfloat16,
  float16 or float8 product fits in float32's 24 bits), the products are summed over K in order and the sum is
  added to the accumulator. That is what an MMA computes up to the order of its float32 additions, and a row
  gets the same bits wherever it sits in the tile. float32 operands multiply in float32 (``input_precision`` is
  not emulated: tf32 rounding is a GPU's, never the interpreter's). int8 dots (exact in int32) and float16
  accumulators (``out_dtype=tl.float16``) keep triton's code.
- ``cast_impl`` (behind ``.to()``, and the fp_ext / fp_trunc / int <-> float casts) truncates float32 ->
  bfloat16 instead of rounding to nearest even, widens bfloat16 subnormals wrongly, and stores a float64 or
  integer value's integer part as a bfloat16's bits. Replaced for every cast to or from bfloat16: bfloat16
  widens to float32 by its bits (exact), and a value rounds to bfloat16 to nearest, ties to even, once (float64
  and integers through float32 rounded to odd, which leaves no double rounding); NaN becomes 0x7FC0, bit for bit
  torch's cast.
- ``create_fp_to_fp`` (float16 <-> bfloat16, which triton keeps apart from the other casts) rounds by hand in
  3.6/3.7 (ties away from zero, with a lost carry into the exponent) and widens float16 with an overflowing
  exponent clamp: routed through the casts above when the rounding is to nearest even.
- ``binary_op`` / ``unary_op`` / ``ternary_op`` / ``create_fma`` (elementwise arithmetic, comparisons, min/max,
  clamp, fma) compute on the bits as integers. Replaced where the operands are bfloat16: computed in float32 and
  rounded once to bfloat16 (float32's 24 bits are at least 2 * 8 + 2, so for + - * / this is the correctly
  rounded bfloat16 result a GPU gives); an fma is rounded once from its exact value. A comparison keeps
  triton's form, and ``tl.where`` (which only moves bits) triton's code. Reductions and scans over bfloat16
  (``tl.sum`` of a bfloat16 tensor) are not replaced: widen first (``x.to(tl.float32)``), as kernels here and
  vLLM's do.

``kernels.runtime.configure_triton()`` installs them when it finds the interpreter on, and every launcher of this
project's kernels does before its first interpreted launch (``kernels.triton.common.check_launch_device``); both
import this module only then. With the interpreter off nothing installs them, and a compiled kernel never builds
through ``InterpreterBuilder`` anyway: a GPU runs triton's own code. A triton whose interpreter lacks these
methods with these parameters is refused with a RuntimeError naming its version, never half patched.
"""
from __future__ import annotations

import inspect

import numpy as np
import triton
import triton.language as tl
from triton.runtime import interpreter as _interp

# the parameters (after self) each replaced method must have in the installed triton: 3.6, 3.7 and 3.9 agree
_REQUIRED = {
    "create_dot": ("a", "b", "d", "input_precision", "max_num_imprecise_acc"),
    "cast_impl": ("src", "dst_type"),
    "create_fp_to_fp": ("src", "dst_type", "rounding_mode"),
    "binary_op": ("lhs", "rhs", "op"),
    "unary_op": ("arg", "op"),
    "ternary_op": ("lhs", "rhs", "other", "op"),
    "create_fma": ("x", "y", "z"),
}
_ORIGINAL: dict = {}  # method name -> triton's own function, filled by install()
BF16_NAN = np.uint16(0x7FC0)  # the quiet NaN torch's float -> bfloat16 cast stores for every NaN


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32 values: the bits are float32's upper half, so this is exact."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16, to nearest with ties to even, as uint16 bits (NaN -> 0x7FC0).

    Adding ``0x7FFF`` plus the kept least significant bit to the float32 bits and dropping the low 16 rounds the
    magnitude to nearest even, carrying into the exponent where the mantissa overflows (so the largest finite
    values round up to infinity, as they must); infinities are unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    with np.errstate(over="ignore"):  # only a NaN's bits can wrap, and a NaN is replaced below
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    return np.where(np.isnan(x), BF16_NAN, rounded.astype(np.uint16))


def float64_to_float32_odd(x: np.ndarray) -> np.ndarray:
    """float64 to float32 rounded to odd: truncated toward zero, the last bit set when anything was dropped.

    float32 keeps 16 more bits than bfloat16, so rounding this to bfloat16 to nearest even gives the bfloat16
    nearest ``x`` (rounding float64 to float32 to nearest first could make a tie that ``x`` is not).
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's range is inf here, stepped back below
        near = x.astype(np.float32)
        wide = near.astype(np.float64)
    inexact = (wide != x) & ~np.isnan(x)
    bits = near.view(np.uint32)
    bits = np.where(inexact & (np.abs(wide) > np.abs(x)), bits - np.uint32(1), bits)  # one step toward zero
    return np.where(inexact, bits | np.uint32(1), bits).view(np.float32)


def _to_bf16_bits(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.float32:
        return float32_to_bf16_bits(data)
    if data.dtype == np.float16:
        return float32_to_bf16_bits(data.astype(np.float32))  # float16 -> float32 is exact
    return float32_to_bf16_bits(float64_to_float32_odd(data.astype(np.float64)))  # float64, integers, bool


def _cast_impl(self, src, dst_type):
    src_ty, dst_ty = src.dtype.scalar, dst_type.scalar
    if dst_ty == src_ty or tl.bfloat16 not in (src_ty, dst_ty):
        return _ORIGINAL["cast_impl"](self, src, dst_type)
    if src_ty == tl.bfloat16:
        wide = bf16_bits_to_float32(src.data)
        if dst_ty == tl.float32:
            return _interp.TensorHandle(wide, dst_ty)
        with np.errstate(invalid="ignore"):  # a signalling NaN's bits: widened, it is a quiet NaN, as on a GPU
            return _ORIGINAL["cast_impl"](self, _interp.TensorHandle(wide, tl.float32), dst_type)
    return _interp.TensorHandle(_to_bf16_bits(src.data), dst_ty)


def _create_fp_to_fp(self, src, dst_type, rounding_mode):
    src_ty, dst_ty = src.dtype.scalar, dst_type.scalar
    standard = (tl.float16, tl.bfloat16, tl.float32, tl.float64)
    if (tl.bfloat16 in (src_ty, dst_ty) and src_ty in standard and dst_ty in standard
            and getattr(rounding_mode, "name", "RTNE") == "RTNE"):
        return _cast_impl(self, src, dst_type)
    return _ORIGINAL["create_fp_to_fp"](self, src, dst_type, rounding_mode)


def _widen(handle, dtype) -> np.ndarray:
    ty = handle.dtype.scalar
    if ty == tl.bfloat16:
        return bf16_bits_to_float32(handle.data).astype(dtype, copy=False)
    if ty.primitive_bitwidth == 8:  # float8: through float16, exactly as triton's own dot does
        return _interp._convert_float(handle.data, ty, tl.float16, None).view(np.float16).astype(dtype)
    return handle.data.astype(dtype, copy=False)


def _create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    acc = d.data
    if acc.dtype not in (np.float32, np.float64) or not (a.dtype.scalar.is_floating() and b.dtype.scalar.is_floating()):
        return _ORIGINAL["create_dot"](self, a, b, d, input_precision, max_num_imprecise_acc)
    x, y = _widen(a, acc.dtype), _widen(b, acc.dtype)
    total = x[..., :, 0, None] * y[..., None, 0, :]  # (..., M, N): exact products for 16- and 8-bit operands
    for k in range(1, x.shape[-1]):
        total += x[..., :, k, None] * y[..., None, k, :]
    return _interp.TensorHandle(acc + total, d.dtype.scalar)


def _bf16(*handles) -> bool:
    return all(h.dtype.scalar == tl.bfloat16 for h in handles)


def _wide(handle) -> np.ndarray:
    if handle.dtype.scalar == tl.bfloat16:
        return bf16_bits_to_float32(handle.data)
    return handle.data


def _bf16_result(raw: np.ndarray):
    """A float result of bfloat16 operands rounded once to bfloat16; a comparison's booleans as triton keeps
    them for a bfloat16 operand (0/1 in its uint16 storage)."""
    bits = raw.astype(np.uint16) if raw.dtype == np.bool_ else _to_bf16_bits(raw)
    return _interp.TensorHandle(bits, tl.bfloat16)


def _binary_op(self, lhs, rhs, op):
    if not _bf16(lhs, rhs):
        return _ORIGINAL["binary_op"](self, lhs, rhs, op)
    return _bf16_result(op(_wide(lhs), _wide(rhs)))


def _unary_op(self, arg, op):
    if not _bf16(arg):
        return _ORIGINAL["unary_op"](self, arg, op)
    return _bf16_result(op(_wide(arg)))


def _ternary_op(self, lhs, rhs, other, op):
    if op is np.where or not _bf16(other):  # a select moves bits: triton's code is right
        return _ORIGINAL["ternary_op"](self, lhs, rhs, other, op)
    return _bf16_result(op(_wide(lhs), _wide(rhs), _wide(other)))


def _create_fma(self, x, y, z):
    if not _bf16(x, y, z):
        return _ORIGINAL["create_fma"](self, x, y, z)
    return _bf16_result(fma_rounded_to_odd(*(_wide(h).astype(np.float64) for h in (x, y, z))))


def fma_rounded_to_odd(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``x * y + z`` of bfloat16 values in float64, rounded to odd, so that rounding it on to bfloat16 rounds the
    exact value once. The product is exact (16 significant bits); the sum's rounding error ``e`` is exact too
    (Knuth's two-sum), and where it is not zero the exact value lies between the sum and its neighbour toward
    ``e``: of those two the one with an odd last bit is the rounding to odd."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the error term of an infinite sum
        p = x * y
        s = p + z
        t = s - p
        e = (p - (s - t)) + (z - t)
        inexact = np.isfinite(s) & (e != 0) & ((s.view(np.uint64) & np.uint64(1)) == 0)
        return np.where(inexact, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)


_REPLACEMENTS = {"create_dot": _create_dot, "cast_impl": _cast_impl, "create_fp_to_fp": _create_fp_to_fp,
                 "binary_op": _binary_op, "unary_op": _unary_op, "ternary_op": _ternary_op, "create_fma": _create_fma}


def check_supported() -> None:
    """RuntimeError naming the triton version when its interpreter lacks a method this module replaces."""
    builder = getattr(_interp, "InterpreterBuilder", None)
    problems = [] if builder is not None else ["no InterpreterBuilder"]
    for name, params in _REQUIRED.items():
        fn = getattr(builder, name, None)
        got = tuple(inspect.signature(fn).parameters)[1:] if callable(fn) else None
        if got != params:
            problems.append(f"InterpreterBuilder.{name}({', '.join(got) if got else 'missing'}), expected "
                            f"({', '.join(params)})")
    for name in ("TensorHandle", "_convert_float"):
        if not hasattr(_interp, name):
            problems.append(f"no triton.runtime.interpreter.{name}")
    if problems:
        raise RuntimeError(f"kernels.interpreter_fixes: triton {triton.__version__}'s interpreter is not one this "
                           f"patch knows (written for triton 3.6 to 3.9): {'; '.join(problems)}. Without it bfloat16 "
                           "tl.dot and .to() give wrong values under TRITON_INTERPRET=1")


def install() -> None:
    """Replace the interpreter's dot and its bfloat16 casts and arithmetic, once per process (later calls do nothing).

    Called where ``TRITON_INTERPRET`` is on (see the module docstring). Raises RuntimeError naming the triton
    version when its interpreter is not one this module knows.
    """
    if not _ORIGINAL:
        check_supported()
        for name, fn in _REPLACEMENTS.items():
            _ORIGINAL[name] = getattr(_interp.InterpreterBuilder, name)
            setattr(_interp.InterpreterBuilder, name, fn)


def installed() -> bool:
    """True when this process's interpreter runs the replaced methods."""
    return all(getattr(_interp.InterpreterBuilder, name, None) is fn for name, fn in _REPLACEMENTS.items())
