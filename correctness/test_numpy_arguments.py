"""A numpy array passed to any public op of ``kernels.triton`` is a ValueError naming the argument, raised before
any kernel launches, with ``validate=True`` and ``validate=False`` alike (the check looks at Python types only).

Every tensor argument of every launch case (``correctness/launch_cases.py``: one small valid call per op), and
every tensor field of an ``Int4Weight`` / ``Fp8Weight`` argument, is replaced in turn by a numpy array of its
shape; the rest of the call stays valid, so the error can only come from that argument.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect

import numpy as np
import pytest
import torch

import kernels.triton as T
from correctness.launch_cases import CASES
from kernels.runtime import interpreter_enabled
from roofline.compile_metrics import capture_launches


def _recording():
    """Records every kernel launch under the interpreter (none run); on a GPU, an empty list."""
    return capture_launches() if interpreter_enabled() else contextlib.nullcontext([])


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return np.zeros(tuple(t.shape), dtype=np.float32 if t.is_floating_point() else np.int64)


def _substitutions(op, args, kwargs):
    """``(name in the message, args, kwargs)`` with one tensor (or one weight field) made a numpy array."""
    names = list(inspect.signature(getattr(T, op)).parameters)
    bound = dict(zip(names, args)) | kwargs
    for name, value in bound.items():
        if isinstance(value, torch.Tensor):
            yield name, {**bound, name: _as_numpy(value)}
        elif dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                inner = getattr(value, f.name)
                if isinstance(inner, torch.Tensor):
                    yield f"{name}.{f.name}", {**bound, name: dataclasses.replace(value, **{f.name: _as_numpy(inner)})}


@pytest.mark.meta_unsupported("its cases are built by correctness/launch_cases.py, which quantizes with kernels.triton (values needed), and it hands numpy arrays on purpose")
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-validate"])
def test_numpy_argument_is_a_value_error_naming_it(case, validate, device):
    op, args, kwargs, hints = CASES[case](device)
    subs = list(_substitutions(op, args, kwargs))
    assert subs, f"{case}: no tensor argument to substitute"
    fn = getattr(T, op)
    for name, call in subs:
        call = dict(call, validate=validate, **({} if validate else hints))
        with _recording() as launches:
            with pytest.raises(ValueError) as err:
                fn(**call)
        assert str(err.value).startswith(f"{name}: "), (case, name, str(err.value))
        assert "numpy" in str(err.value), str(err.value)
        assert launches == [], f"{case}: {name} launched {[m['kernel'] for m in launches]} before the error"


@pytest.mark.meta_unsupported("its cases are built by correctness/launch_cases.py, which quantizes with kernels.triton (values needed)")
def test_the_same_calls_with_tensors_run(device):
    """Positive control: each case as built (torch tensors throughout) raises nothing."""
    for case in sorted(CASES):
        op, args, kwargs, _ = CASES[case](device)
        getattr(T, op)(*args, **kwargs)
