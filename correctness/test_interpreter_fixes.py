"""``kernels/interpreter_fixes.py``: under the interpreter, a kernel anyone writes with plain ``tl.dot`` and
``.to()`` on bfloat16 (or float16) computes what a GPU computes.

The dot kernel below is a user's (no helper of this project): its result must equal, bit for bit, float32
operands widened from the 16-bit ones, their exact products summed over K in order in float32 and added to the
accumulator; and agree with float64 and torch's float32 matmul of the same widened operands within the rounding
of K float32 additions (the order of accumulation is all that may differ from a GPU's MMA). The casts to and
from bfloat16 are compared bit for bit with torch's (round to nearest even), over every bfloat16 and float16 bit
pattern where the source is 16 bits wide. bfloat16 elementwise arithmetic (+ - * /, min/max, negation, select,
fma) is compared bit for bit with the correctly rounded result.
"""
from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from kernels import interpreter_fixes
from kernels.testing.assertions import assert_bitwise_equal
from kernels.testing.tolerances_gemm import gamma

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = pytest.mark.interpreter("pins what the Triton interpreter computes (a GPU's MMA sums in its own order)")


@triton.jit
def _user_dot(a_ptr, b_ptr, acc_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    m, n, k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * N + n[None, :])
    acc = tl.load(acc_ptr + m[:, None] * N + n[None, :])
    tl.store(c_ptr + m[:, None] * N + n[None, :], tl.dot(a, b, acc))


@triton.jit
def _cast(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask).to(y_ptr.dtype.element_ty), mask=mask)


def _in_order(a32: np.ndarray, b32: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """acc + sum_k a[:, k] b[k, :], each product exact, the sum over k = 0, 1, ... rounded to float32 per step."""
    total = a32[:, 0, None] * b32[None, 0, :]
    for k in range(1, a32.shape[1]):
        total = total + a32[:, k, None] * b32[None, k, :]
    return acc + total


@INTERPRETED
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_user_tl_dot_is_an_exact_product_float32_sum(dtype):
    m, n, k = 16, 32, 64
    g = torch.Generator().manual_seed(20)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    acc = torch.randn(m, n, generator=g)
    a[m - 1], acc[m - 1] = a[0], acc[0]  # one row first and last in the tile: an MMA gives both the same bits
    c = torch.empty(m, n)
    _user_dot[(1,)](a, b, acc, c, M=m, N=n, K=k)

    a32, b32 = a.float(), b.float()
    assert_bitwise_equal(c, torch.from_numpy(_in_order(a32.numpy(), b32.numpy(), acc.numpy())), name="tl.dot")
    assert_bitwise_equal(c[m - 1], c[0], name="the same row at another place in the tile")
    # K additions of exact products (and the accumulator), each rounded once in float32: gamma(K) of the sum of
    # magnitudes from the exact value; torch's float32 matmul (another order) within twice that
    magnitude = acc.double().abs() + a32.double().abs() @ b32.double().abs()
    exact = acc.double() + a32.double() @ b32.double()
    assert bool(((c.double() - exact).abs() <= gamma(k) * magnitude).all())
    assert bool(((c.double() - (acc + a32 @ b32).double()).abs() <= 2 * gamma(k + 1) * magnitude).all())
    assert bool((c != acc).any()) and bool(torch.isfinite(c).all())


def _bf16_patterns() -> torch.Tensor:
    return torch.from_numpy(np.arange(1 << 16, dtype=np.uint16).view(np.int16)).view(torch.bfloat16)


def _fp16_patterns() -> torch.Tensor:
    return torch.from_numpy(np.arange(1 << 16, dtype=np.uint16).view(np.float16).copy())


def _run_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    _cast[(triton.cdiv(x.numel(), 8192),)](x, y, x.numel(), BLOCK=8192)
    return y


def _finite_below(x: torch.Tensor, bound: float) -> torch.Tensor:
    return x[torch.isfinite(x) & (x.float().abs() < bound)]


CASTS = {  # source patterns -> destination dtype; torch's cast is the oracle
    "bfloat16-to-float32": (_bf16_patterns, torch.float32),
    "bfloat16-to-float64": (_bf16_patterns, torch.float64),
    "bfloat16-to-float16": (_bf16_patterns, torch.float16),  # past 65504: inf
    "bfloat16-to-int32": (lambda: _finite_below(_bf16_patterns(), 2.0 ** 31), torch.int32),
    "float16-to-bfloat16": (_fp16_patterns, torch.bfloat16),
    "int32-to-bfloat16": (lambda: torch.cat([torch.arange(-70000, 70000, dtype=torch.int32),
                                             torch.tensor([2 ** 24 - 1, 2 ** 24 - 3, -(2 ** 24 - 5), 0x7FFF8000,
                                                           -0x7FFF8000, 2 ** 31 - 1, -2 ** 31])]), torch.bfloat16),
}


@pytest.mark.meta_unsupported("launches its own Triton kernel (not an op of the implementation under test)")
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # bfloat16 -> float16 past 65504
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # a signalling NaN widened
@pytest.mark.parametrize("case", list(CASTS))
def test_bfloat16_casts_match_torch_bit_for_bit(case, device):
    patterns, dtype = CASTS[case]
    x = patterns().to(device)
    y = _run_cast(x, dtype)
    expected = x.to(dtype)
    if x.dtype.is_floating_point and dtype.is_floating_point:
        nan = torch.isnan(x)
        assert bool(torch.isnan(y[nan]).all()), "a NaN must stay NaN"
        y, expected = y[~nan], expected[~nan]
    assert_bitwise_equal(y, expected, name=case)


@INTERPRETED
def test_float64_to_bfloat16_rounds_once():
    # 1 + 2**-8 is a bfloat16 tie; 2**-30 above it rounds up. Through float32 to nearest first, the 2**-30 is lost
    # and the tie rounds to even (1.0): torch's CPU cast does that, a GPU's cvt from float64 does not
    x = torch.tensor([1 + 2 ** -8 + 2 ** -30, -(1 + 2 ** -8 + 2 ** -30), 1 + 2 ** -8, 3 * 2 ** -8 + 2 ** -40],
                     dtype=torch.float64)
    y = _run_cast(x, torch.bfloat16)
    assert y.float().tolist() == [1 + 2 ** -7, -(1 + 2 ** -7), 1.0, 3 * 2 ** -8]


@triton.jit
def _arithmetic(x_ptr, y_ptr, z_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    z = tl.load(z_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)
    tl.store(out_ptr + n + offs, x - y, mask=mask)
    tl.store(out_ptr + 2 * n + offs, x * y, mask=mask)
    tl.store(out_ptr + 3 * n + offs, x / y, mask=mask)
    tl.store(out_ptr + 4 * n + offs, tl.maximum(x, y), mask=mask)
    tl.store(out_ptr + 5 * n + offs, tl.minimum(x, y), mask=mask)
    tl.store(out_ptr + 6 * n + offs, -x, mask=mask)
    tl.store(out_ptr + 7 * n + offs, tl.where(x < y, x, z), mask=mask)
    tl.store(out_ptr + 8 * n + offs, tl.abs(x), mask=mask)
    tl.store(out_ptr + 9 * n + offs, tl.fma(x, y, z), mask=mask)


ARITHMETIC = ("x + y", "x - y", "x * y", "x / y", "maximum", "minimum", "-x", "where(x < y, x, z)", "|x|",
              "fma(x, y, z)")


def _fma_nearest_bfloat16(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x * y + z rounded once to bfloat16 (to nearest, ties to even), from the exact rational value; torch's CPU
    cast from float64 rounds through float32, twice, so its result is only a candidate."""
    near = (x.double() * y.double() + z.double()).to(torch.bfloat16)
    out = near.clone().view(torch.int16)
    for i, (a, b, c, n) in enumerate(zip(x.tolist(), y.tolist(), z.tolist(), near.view(torch.int16).tolist())):
        if not all(map(np.isfinite, (a, b, c, near[i].item()))):
            continue
        exact = Fraction(a) * Fraction(b) + Fraction(c)
        candidates = [n - 1, n, n + 1] if n not in (0x7F7F, -0x8081) else [n - 1, n]  # neighbours, same sign
        value = torch.tensor(candidates, dtype=torch.int16).view(torch.bfloat16).tolist()
        out[i] = min(zip(candidates, value), key=lambda cv: (abs(Fraction(cv[1]) - exact), cv[0] & 1))[0]
    return out.view(torch.bfloat16)


@INTERPRETED
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # x / 0 is inf, as on a GPU
def test_bfloat16_arithmetic_is_rounded_once_from_float32():
    # float32 has at least 2 * 8 + 2 bits: + - * / done there and rounded to bfloat16 are the correctly rounded
    # bfloat16 results (torch's CPU bfloat16 ops compute them the same way); fma rounds once from float64
    g = torch.Generator().manual_seed(2)
    n = 4096
    x, y, z = (torch.randn(n, generator=g) * torch.exp2(torch.randint(-20, 20, (n,), generator=g)) for _ in range(3))
    # signed zeros in y only: triton before 3.9 builds -x as 0 - x (+0 for x = +0, on a GPU too)
    x[:4], y[:4] = torch.tensor([float("inf"), 3.0, -2.0, 0.5]), torch.tensor([1.0, float("-inf"), 0.0, -0.0])
    x, y, z = (t.to(torch.bfloat16) for t in (x, y, z))
    out = torch.empty(len(ARITHMETIC), n, dtype=torch.bfloat16)
    _arithmetic[(triton.cdiv(n, 1024),)](x, y, z, out, n, BLOCK=1024)
    expected = (x + y, x - y, x * y, x / y, torch.maximum(x, y), torch.minimum(x, y), -x, torch.where(x < y, x, z),
                x.abs(), _fma_nearest_bfloat16(x, y, z))
    for name, got, want in zip(ARITHMETIC, out, expected):
        assert_bitwise_equal(got, want, name=name)


@INTERPRETED
def test_installed_for_this_process():
    # conftest's configure_triton() installed them; a user's kernel above ran through them
    assert interpreter_fixes.installed()


@pytest.mark.host_only("starts its own process with the interpreter off; runs no kernel")
def test_nothing_is_patched_with_the_interpreter_off():
    code = ("from kernels.runtime import configure_triton\n"
            "assert configure_triton() == 'cuda'\n"  # TRITON_INTERPRET=0, set by the user, is respected
            "from kernels import interpreter_fixes\n"
            "assert not interpreter_fixes.installed()\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**env, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.host_only("inspects an interpreter class with a method missing; runs no kernel")
def test_an_unknown_interpreter_is_refused_naming_the_triton_version(monkeypatch):
    class Builder:  # an interpreter without create_dot, and a cast_impl that takes other parameters
        def cast_impl(self, handle, ty):
            pass

        def create_fp_to_fp(self, src, dst_type, rounding_mode):
            pass

    monkeypatch.setattr(interpreter_fixes._interp, "InterpreterBuilder", Builder)
    with pytest.raises(RuntimeError, match=rf"triton {triton.__version__}'s interpreter .*create_dot\(missing\).*"
                                           r"cast_impl\(handle, ty\), expected \(src, dst_type\)"):
        interpreter_fixes.check_supported()
