"""The op registry (``kernels/ops``) and the providers (``kernels/impls``): every op complete, importing them
costs no torch or triton, and every way a user names an implementation resolves or fails clearly."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest

from kernels.impls import Provider, builtin_names, from_object, load
from kernels.ops import NotProvidedError, Unsupported, get, registry, resolve

pytestmark = pytest.mark.host_only("the op registry and provider loading: no kernel")


def test_importing_the_registry_imports_neither_torch_nor_triton():
    code = ("import sys; import kernels.ops as o, kernels.impls as i; specs = o.registry(); "
            "assert 'torch' not in sys.modules and 'triton' not in sys.modules, sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'triton'))[:5]; print(len(specs))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(registry())


@pytest.mark.parametrize("name", list(registry()))
def test_every_op_is_complete(name):
    """A reference, an implementation, a check shape, a benchmark shape and a cost model at every shape."""
    spec = get(name)
    assert callable(resolve(spec.reference)), spec.reference
    assert callable(resolve(spec.kernel)), spec.kernel
    assert spec.torch is None or callable(resolve(spec.torch))
    assert spec.check, f"{name}: no check shape"
    cases = spec.cases()
    assert cases and all(c.op == name for c in cases), f"{name}: no benchmark (catalogue) case"
    assert any(c.quick for c in cases) or name == "grouped_gemm", f"{name}: nothing in the --quick catalogue"
    for c in cases:
        for shape in (c.shape, c.small):
            cost = spec.cost(shape)
            assert cost.bytes_min > 0, f"{name}/{c.name}: no minimum bytes"
    assert spec.outputs and all(isinstance(o, str) for o in spec.outputs)
    assert spec.summary and spec.__module__ if hasattr(spec, "__module__") else True


@pytest.mark.parametrize("name", list(registry()))
def test_every_op_answers_what_the_report_asks(name):
    """The spec fields the report, its figures and the launch-path tests read instead of naming ops: a launch
    case; full-size inputs for an op counted at full size (they build: stride 0, nothing executes); a capped
    shape that still follows the op's shape schema; a row summary; a known scaling of capped counts."""
    from roofline.lazy_inputs import lazy_inputs

    spec = get(name)
    assert spec.launch_cases, f"{name}: no launch case (OpSpec.launch_cases: the launch-path tests call every op)"
    assert spec.capped_scaling in ("ratio", "k_by_launch"), f"{name}: capped_scaling {spec.capped_scaling!r}"
    assert len(spec.style) == 2, f"{name}: style is (marker, colour)"
    if spec.full_size_count:
        assert spec.full_inputs, f"{name}: counted at full size (full_size_count) but declares no full_inputs"
    for c in spec.cases():
        assert isinstance(spec.row_shape(c.shape), dict)
        medium = spec.medium_shape(c.shape)
        if medium is not None:
            assert spec.full_size_count, f"{name}: a capped shape, but the op is not counted at full size"
            spec.shape.validate(medium, f"{c.name} (capped)")
        if spec.full_inputs:
            args, kwargs = lazy_inputs(c)
            assert args and isinstance(kwargs, dict)


def test_every_kernel_module_of_the_contract_has_an_op_or_is_a_helper():
    """Each function ``kernels.triton`` exports either is a registry op or is one of the contract's helpers
    (quantizers, router, permutation, weight types) that the GEMM and MoE specs build their inputs with."""
    import kernels.triton
    from kernels.ops import HELPERS

    assert set(kernels.triton.__all__) - set(HELPERS) == set(registry())


def test_unknown_op_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="op: unknown op 'nope'"):
        get("nope")


def test_builtin_providers_load():
    names = builtin_names()
    assert {"servekernels", "reference", "torch", "vllm"} <= set(names)
    for name in ("servekernels", "reference", "torch"):
        p = load(name)
        assert p.name == name
        for op in registry():
            assert callable(p.op(op)), (name, op)
    assert load("servekernels").internal and not load("torch").internal


def test_a_user_module_provides_only_what_it_defines(monkeypatch):
    mod = types.ModuleType("my_kernels")
    mod.paged_decode = lambda *a, **k: None
    mod.SERVEKERNELS_UNSUPPORTED = {"paged_decode": {"fp8_kv": "no fp8 path yet"}}
    monkeypatch.setitem(sys.modules, "my_kernels", mod)
    p = load("my_kernels")
    assert p.provides("paged_decode") and not p.provides("paged_prefill")
    with pytest.raises(NotProvidedError, match="paged_prefill not provided"):
        p.op("paged_prefill")
    import torch

    q = torch.zeros(1, 2, 8)
    cache = torch.zeros(1, 16, 1, 8, dtype=torch.float8_e4m3fn)
    with pytest.raises(Unsupported, match="fp8_kv: no fp8 path yet"):
        p.op("paged_decode")(q, cache, cache, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, dtype=torch.int32))


def test_module_attr_and_provider_objects(monkeypatch):
    mod = types.ModuleType("my_pkg")
    mod.ns = types.SimpleNamespace(merge_states=lambda o, l: (o, l))
    mod.ready = Provider("ready", "a ready-made provider", {"write_kv": lambda *a: a})
    monkeypatch.setitem(sys.modules, "my_pkg", mod)
    assert load("my_pkg:ns").provides("merge_states")
    assert load("my_pkg:ready") is mod.ready


def test_entry_points_register_a_package(monkeypatch):
    import kernels.impls as impls

    mod = types.ModuleType("vendor_kernels")
    mod.write_kv = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "vendor_kernels", mod)
    monkeypatch.setattr(impls, "_entry_points", lambda: {"vendor": "vendor_kernels"})
    assert load("vendor").provides("write_kv")


@pytest.mark.parametrize("target, message", [
    ("no_such_module_xyz", "--impl: 'no_such_module_xyz' is neither a built-in provider"),
    ("math", "--impl: 'math' defines none of the contract's functions"),
])
def test_a_wrong_impl_name_is_a_value_error_naming_impl(target, message):
    with pytest.raises(ValueError, match=message):
        load(target)


def test_deviations_are_regular_expressions_over_names():
    p = Provider("x", "", {}, deviations={r"/merge-s\d": "why"})
    assert p.deviation_for("llama3-8b/merge-s2-with-empty-partials") == "why"
    assert p.deviation_for("llama3-8b/decode-ragged") is None


def test_user_module_without_contract_functions_fails_from_object():
    with pytest.raises(ValueError, match="defines none"):
        from_object("empty", "json")
