"""The implementation under test: ``T.<op>`` in a parity test is the op of the provider ``--impl`` names.

``python -m pytest --impl NAME`` (repeatable; default ``servekernels``) runs the parity suite against each
implementation (``kernels.impls.load``): a test module whose ``T`` is this module's ``T`` is a parity module and
is parametrized by implementation (``conftest.py``). ``T.<name>`` resolves at call time:
- an op the provider lacks -> the test is skipped as "not provided" (listed, never passed);
- a case it declines (``Unsupported``) -> skipped as "unsupported: <reason>";
- a known deviation (``Provider.deviations``, regular expressions over node ids) -> a strict expected failure.
``Q.<quantizer>`` builds a GEMM's quantized inputs: the implementation's quantizer, or the reference's where it has none.
Tests about this project's internals carry ``@pytest.mark.servekernels`` and run only for ``servekernels``.

Every call through ``T`` is guarded (``kernels.testing.integrity``): its inputs are digested before and
compared after (the op's in-place arguments excepted), introspection of the judge (the garbage collector, other
threads' frames) is refused, and every returned tensor must be a plain ``torch.Tensor``, dense, sharing no
storage with an input (an in-place op's, ``OpSpec.writes``, returns its caller's tensors); a broken rule fails the test with ``integrity.Breach`` naming it. The judge's objects
are snapshotted before any implementation is imported and checked after each test (``conftest.py``).
"""
from __future__ import annotations

import functools

import pytest

import kernels.reference
from kernels.impls import NotProvidedError, Unsupported, load
from kernels.ops import registry
from kernels.testing.gemm import to_device
from kernels.testing.integrity import guard, vet_returned

_current = {"provider": None}


def set_current(provider) -> None:
    _current["provider"] = provider


def current():
    if _current["provider"] is None:

        _current["provider"] = load("servekernels")
    return _current["provider"]


def _skipping(fn, provider, name):
    spec = registry().get(name)
    guarded = guard(fn, spec, name)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            result = guarded(*args, **kwargs)
        except Unsupported as exc:
            pytest.skip(f"{provider.name}: {name}: unsupported: {exc}")
        if not getattr(spec, "writes", ()):  # an in-place op returns the caller's own tensors
            vet_returned(name, result)
        return result

    return call


class _Implementation:
    """Attribute access gives the current provider's function (see the module docstring)."""
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        provider = current()
        try:
            fn = provider.op(name)
        except NotProvidedError:
            pytest.skip(f"{provider.name}: {name} not provided")
        except ImportError as exc:  # vLLM that cannot load here
            pytest.skip(f"{provider.name}: cannot load: {exc}")
        return _skipping(fn, provider, name) if callable(fn) and not isinstance(fn, type) else fn

    def __repr__(self):
        return f"<implementation under test: {current().name}>"


T = _Implementation()


QUANTIZERS = ("quantize_int4", "quantize_fp8", "quantize_fp8_act", "quantize_mxfp4")


class _InputQuantizers:
    """``Q.<quantizer>``: what a parity test builds a GEMM's quantized inputs with. The implementation's own
    quantizer where it provides one; else the reference's, its result on the input's device (the contract: an
    implementation that provides a GEMM but not its quantizer gets inputs built with the reference quantizer).
    A quantizer itself is judged through ``T`` (``test_quantize_int4.py``, ``test_quantize_fp8.py``)."""
    def __getattr__(self, name: str):
        if name not in QUANTIZERS:
            raise AttributeError(name)
        if current().provides(name):
            return getattr(T, name)

        reference = getattr(kernels.reference, name)

        def quantize(x, *args, **kwargs):
            result = reference(x, *args, **kwargs)
            return tuple(to_device(r, x.device) for r in result) if isinstance(result, tuple) else \
                to_device(result, x.device)

        return quantize


Q = _InputQuantizers()
