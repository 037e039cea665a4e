"""Every contract name exists in both ``kernels.reference`` and ``kernels.triton`` and is the function itself,
even after all kernel modules were imported (a submodule sharing a function's name would shadow it)."""
import importlib
import inspect
import pkgutil

import pytest

import kernels.reference
import kernels.triton

pytestmark = pytest.mark.host_only("names and signatures only")

CONTRACT_NAMES = ["paged_decode", "paged_prefill", "merge_states", "write_kv", "quantize_int4", "dequantize_int4",
                  "grouped_gemm_int4", "quantize_fp8", "quantize_fp8_act", "grouped_gemm_fp8", "route",
                  "moe_permute", "fused_moe", "rms_norm",
                  "fused_add_rms_norm", "rms_norm_quant_fp8", "rotary_embedding"]


def import_all(pkg):
    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


@pytest.mark.parametrize("pkg", [kernels.reference, kernels.triton], ids=["reference", "triton"])
def test_contract_names_resolve_to_callables(pkg):
    import_all(pkg)
    for name in CONTRACT_NAMES + ["grouped_gemm"]:
        obj = getattr(pkg, name)
        assert inspect.isfunction(obj), f"{pkg.__name__}.{name} is {obj!r}, not a function"


@pytest.mark.parametrize("name", ["paged_decode", "paged_prefill", "write_kv", "merge_states", "fused_moe",
                                  "grouped_gemm_int4", "grouped_gemm_fp8"])
def test_same_signature_in_both(name):
    ref = inspect.signature(getattr(kernels.reference, name)).parameters
    tri = inspect.signature(getattr(kernels.triton, name)).parameters
    missing = [p for p in ref if p not in tri and p != "intermediate_dtype"]
    assert not missing, f"kernels.triton.{name} lacks {missing}"
    for p in ("return_lse", "num_splits", "split_size", "k_scale", "v_scale", "sliding_window", "soft_cap"):
        if p in ref:
            assert tri[p].default == ref[p].default, f"{name}({p}=...) defaults differ"


def test_int4_and_fp8_weight_types_are_shared():
    assert kernels.triton.Int4Weight is kernels.reference.Int4Weight
    assert kernels.triton.Fp8Weight is kernels.reference.Fp8Weight
