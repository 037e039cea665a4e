"""GPU spec table: dense peaks, detection by device name, user spec files."""
from __future__ import annotations

import json

import pytest

from roofline.specs import DTYPES, all_specs, get_spec, load_spec_file, match_name

pytestmark = pytest.mark.host_only("the GPU spec table and name matching")

REQUIRED = ("h100-sxm", "h100-pcie", "h200", "a100-80gb", "l4", "a10", "rtx-4090")


def test_required_gpus_present_with_sources():
    specs = all_specs()
    for slug in REQUIRED:
        s = specs[slug]
        assert s.source and s.sms > 0 and s.l2_bytes > 0 and s.smem_per_sm_bytes > 0
        assert {"fp32", "fp16", "bf16", "tf32", "int8"} <= set(s.peak_flops)


def test_dense_not_sparse_peaks():
    # H100 SXM: 989.4 TFLOP/s dense bf16 (the datasheet's 1979 is with 2:4 sparsity), 1979 dense fp8
    h = get_spec("h100-sxm")
    assert h.peak("bfloat16") == pytest.approx(989.4e12)
    assert h.peak("float8_e4m3fn") == pytest.approx(2 * h.peak("bf16"), rel=1e-3)
    assert h.hbm_bytes_per_s == pytest.approx(3.35e12) and h.sms == 132
    # dense tensor-core rates are ordered fp32 < tf32 < fp16 <= fp8 on every GPU that has them
    for s in all_specs().values():
        assert s.peak("fp32") < s.peak("tf32") or s.slug == "rtx-4090"  # Ada GeForce: tf32 == fp32 CUDA-core rate
        assert s.peak("tf32") < s.peak("fp16") <= s.peak("fp8")
    # H200 differs from H100 SXM in memory only
    assert get_spec("h200").peak_flops == h.peak_flops
    assert get_spec("h200").hbm_bytes_per_s > h.hbm_bytes_per_s


def test_fp8_falls_back_where_unsupported():
    a100 = get_spec("a100-80gb")
    assert "fp8" not in a100.peak_flops
    assert a100.peak("fp8") == a100.peak("fp16")


@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
])
def test_detect_by_device_name(name, slug):
    assert match_name(name).slug == slug


def test_a10_does_not_match_a100_and_unknown_is_none():
    assert match_name("NVIDIA A100-SXM4-40GB") is None or match_name("NVIDIA A100-SXM4-40GB").slug != "a10"
    assert match_name("NVIDIA Tesla T4") is None


def test_user_spec_file_json_and_toml(tmp_path, monkeypatch):
    entry = {"slug": "b-test", "name": "NVIDIA B-Test", "match": ["B-Test"], "hbm_bytes_per_s": 8e12, "sms": 148,
             "l2_bytes": 126 * 2**20, "smem_per_sm_bytes": 228 * 1024,
             "peak_flops": {"fp32": 80e12, "bf16": 2.25e15, "fp8": 4.5e15}, "source": "test"}
    p = tmp_path / "gpus.json"
    p.write_text(json.dumps([entry]))
    assert get_spec("b-test", extra_file=p).peak("fp8") == 4.5e15
    assert match_name("NVIDIA B-Test", extra_file=p).slug == "b-test"
    t = tmp_path / "gpus.toml"
    t.write_text('[[gpu]]\nslug = "t-test"\nname = "T"\nhbm_bytes_per_s = 1e12\nsms = 10\nl2_bytes = 1048576\n'
                 'smem_per_sm_bytes = 102400\npeak_flops = { fp32 = 1e13, fp16 = 1e14 }\n')
    monkeypatch.setenv("SERVEKERNELS_GPU_SPECS", str(t))
    assert get_spec("t-test").peak("bf16") == 1e14  # bf16 absent: the fp16 rate
    assert load_spec_file(t)[0].source.startswith("user file")


def test_bad_specs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="gpu: unknown GPU"):
        get_spec("nope")
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([{"slug": "x", "name": "x", "hbm_bytes_per_s": 1e12, "sms": 1, "l2_bytes": 1,
                              "smem_per_sm_bytes": 1, "peak_flops": {"fp16": 1e12}}]))
    with pytest.raises(ValueError, match="fp32"):
        load_spec_file(p)
    p.write_text(json.dumps([{"slug": "x"}]))
    with pytest.raises(ValueError, match="missing"):
        load_spec_file(p)
    with pytest.raises(ValueError, match="unknown compute dtype"):
        get_spec().peak("int3")
    assert set(DTYPES) >= set(get_spec().peak_flops)


@pytest.mark.gpu
def test_the_detected_gpus_spec_matches_what_torch_reports():
    """The spec's SM count and L2 size against the driver's (the H200 spec once said 50 MiB; torch says 60)."""
    import torch

    from roofline.specs import detect_spec

    spec = detect_spec(None)
    if spec is None:
        pytest.skip(f"{torch.cuda.get_device_name(0)!r} is not in the spec table")
    props = torch.cuda.get_device_properties(0)
    assert spec.sms == props.multi_processor_count
    assert abs(spec.l2_bytes - props.L2_cache_size) <= 0.05 * props.L2_cache_size, (spec.l2_bytes, props.L2_cache_size)
