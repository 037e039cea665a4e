"""``rms_norm`` against the float64 reference, and the reference's own properties.

Inputs are poisoned (``kernels.testing.norms``): x is a view of rows padded with NaN, the batch has an all-zero
row, a row of magnitude 1e-3 (where eps matters) and one of 1e3. Tolerances: ``norm_atol`` (the float32 norm's
derived relative error plus the output cast), judged against float64, never against our kernel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T
from kernels import reference as R
from kernels.ops.rms_norm import norm_shape
from kernels.ops import get
from kernels.testing.assertions import assert_close
from kernels.testing.norms import norm_atol, norm_rows, norm_weight, padded
from kernels.testing.paged import torch_dtype


def inputs(t, h, dtype, layout="padded", offset=0.0, weight_dtype=None, seed=0, device="cpu"):
    rng = np.random.default_rng(seed)
    x = padded(norm_rows(t, h, rng), dtype, device, layout)
    w = norm_weight(h, rng, offset, weight_dtype or dtype, device)
    return x, w


CASES = [  # (T, H, dtype, weight dtype, layout, eps, weight_offset)
    (70, 300, "bfloat16", "bfloat16", "padded", 1e-6, 0.0),  # two programs, the second partial; H not a power of 2
    (5, 4096, "float16", "float32", "contiguous", 1e-5, 0.0),
    (9, 96, "float32", "float32", "padded", 1e-6, 1.0),  # Gemma's offset
    (3, 2, "bfloat16", "float16", "padded", 1e-6, 0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"t{c[0]}-h{c[1]}-{c[2]}-w{c[3]}-{c[4]}-off{c[6]}")
def test_rms_norm_matches_the_reference(case, device):
    t, h, dtype, wdt, layout, eps, offset = case
    x, w = inputs(t, h, dtype, layout, offset, wdt, seed=t, device=device)
    kw = dict(eps=eps, weight_offset=offset) if offset else dict(eps=eps)
    out = T.rms_norm(x, w, **kw)
    expected = R.rms_norm(x, w, **kw)
    assert out.dtype == torch_dtype(dtype) and tuple(out.shape) == (t, h)
    assert_close(out, expected, atol=norm_atol(expected, dtype, h), name="out")
    if t >= 4:  # the batch has its planted all-zero row
        assert (out[0] == 0).all(), "the all-zero row normalizes to 0 (eps keeps it finite)"


@pytest.mark.meta_unsupported("the test compares output values: a meta tensor has none")
def test_eps_and_offset_change_the_result_where_they_should(device):
    """The 1e-3 row moves by ~30 % between eps 1e-6 and 0 (a kernel dropping eps fails); the offset moves all."""
    x, w = inputs(4, 64, "float32", device=device)
    base = R.rms_norm(x, w, eps=1e-6)
    no_eps = R.rms_norm(x, w, eps=0.0)
    assert abs(base[1] / no_eps[1] - 1).max() > 0.2 and abs(base[3] / no_eps[3] - 1).max() < 1e-5
    out = T.rms_norm(x, w, eps=1e-6, weight_offset=1.0)
    expected = R.rms_norm(x, w, eps=1e-6, weight_offset=1.0)
    assert_close(out, expected, atol=norm_atol(expected, "float32", 64), name="out")
    assert np.abs(expected - base).max() > 0.5


def test_a_constant_row_normalizes_to_the_weight(device):
    """Every x_i = c: y = c / sqrt(c**2 + eps) * w, exactly w * sign(c) when eps = 0 (kernel and reference)."""
    c = torch.tensor([[3.0], [-0.25], [1e-3]], dtype=torch.float64).expand(3, 40).contiguous()
    w = torch.linspace(-2, 2, 40, dtype=torch.float64)
    for eps in (0.0, 1e-6):
        expected = R.rms_norm(c.numpy(), w.numpy(), eps=eps)
        want = (c / torch.sqrt(c * c + eps) * w).numpy()
        np.testing.assert_allclose(expected, want, rtol=1e-14)
        out = T.rms_norm(c.float().to(device), w.float().to(device), eps=eps)
        assert_close(out, want, atol=norm_atol(want, "float32", 40), name=f"constant rows, eps {eps}")


@pytest.mark.host_only("the float64 reference on numpy arrays")
def test_reference_properties():
    """Scale invariance (eps 0), unit mean square of y / w, the offset adds ``offset * x * r``."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((6, 50)), rng.uniform(0.5, 2.0, 50)
    y = R.rms_norm(x, w, eps=0.0)
    np.testing.assert_allclose(R.rms_norm(x * 37.5, w, eps=0.0), y, rtol=1e-13)
    np.testing.assert_allclose(np.mean((y / w) ** 2, axis=1), 1.0, rtol=1e-13)
    y_off = R.rms_norm(x, w, eps=0.0, weight_offset=1.0)
    np.testing.assert_allclose(y_off - y, R.rms_norm(x, np.ones(50), eps=0.0), rtol=1e-12, atol=1e-14)


def test_nan_in_a_row_stays_in_that_row(device):
    x, w = inputs(5, 64, "bfloat16", "contiguous", device=device)
    x[3, 7] = float("nan")
    out = T.rms_norm(x, w, eps=1e-6).float().cpu()
    assert torch.isnan(out[3]).all() and torch.isfinite(out[[0, 1, 2, 4]]).all()


def test_no_rows(device):
    x, w = inputs(0, 64, "bfloat16", "contiguous", device=device)
    assert T.rms_norm(x, w, eps=1e-6).shape == (0, 64)


@pytest.mark.bad_input
@pytest.mark.host_only("bad input is refused before any launch")
@pytest.mark.parametrize("impl", [R, T], ids=["reference", "triton"])
@pytest.mark.parametrize("arg, change", [
    ("x", lambda x, w, kw: (x[0], w, kw)),
    ("weight", lambda x, w, kw: (x, w[:-1], kw)),
    ("weight", lambda x, w, kw: (x, w[None], kw)),
    ("x", lambda x, w, kw: (x.to(torch.int32), w, kw)),
    ("weight", lambda x, w, kw: (x, w.to(torch.float64), kw)),
    ("eps", lambda x, w, kw: (x, w, {**kw, "eps": -1e-6})),
    ("eps", lambda x, w, kw: (x, w, {**kw, "eps": float("nan")})),
    ("weight_offset", lambda x, w, kw: (x, w, {**kw, "weight_offset": float("inf")})),
    ("weight", lambda x, w, kw: (x, w.to("meta"), kw)),
], ids=["x-1d", "weight-short", "weight-2d", "x-int", "weight-f64", "eps-negative", "eps-nan", "offset-inf",
        "weight-device"])
def test_bad_input_raises_value_error_naming_the_argument(impl, arg, change):
    x, w = inputs(4, 32, "bfloat16", "contiguous")
    x, w, kw = change(x, w, {"eps": 1e-6})
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        impl.rms_norm(x, w, **kw)


@pytest.mark.bad_input
@pytest.mark.host_only("bad input is refused before any launch")
def test_numpy_input_is_refused_by_the_kernel():
    import kernels.triton

    with pytest.raises(ValueError, match="^x: is a numpy array"):
        kernels.triton.rms_norm(np.zeros((2, 8), np.float32), torch.ones(8), eps=1e-6)


@pytest.mark.slow
def test_check_shapes_pass(device):
    from kernels.testing.judge import judge

    spec = get("rms_norm")
    for name, shape in spec.check.items():
        verdicts = judge(spec, T.rms_norm, spec.build(shape, device, seed=1))
        assert all(v.ok for v in verdicts), (name, [v.detail for v in verdicts])


@pytest.mark.host_only("a shape dict only")
def test_norm_shape_schema():
    get("rms_norm").shape.validate(norm_shape(3, 8, 1e-6, weight_offset=1.0), "a test shape")
