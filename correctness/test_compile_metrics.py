"""Compile-time metrics (``roofline/compile_metrics.py``, ``roofline/occupancy.py``): the occupancy arithmetic,
the launch capture, and no register spill in any kernel the catalogue's cases launch when compiled for sm_90."""
from __future__ import annotations

import pytest

from roofline.occupancy import resident_blocks, waves
from roofline.specs import ARCH_LIMITS, all_specs, get_spec

pytestmark = pytest.mark.host_only("occupancy arithmetic, launch plans captured without executing, sm_90 compiles by ptxas: no launch")


def test_every_spec_has_its_arch_limits():
    for s in all_specs().values():
        assert s.compute_capability in ARCH_LIMITS
        assert s.regs_per_sm == 65536 and s.max_regs_per_thread == 255
        assert s.smem_per_block_bytes < s.smem_per_sm_bytes
    assert get_spec("l4").compute_capability == 89 and get_spec("l4").max_warps_per_sm == 48
    assert get_spec("a10").max_blocks_per_sm == 16 and get_spec("a100-80gb").compute_capability == 80


def test_resident_blocks_by_each_limit():
    h100 = get_spec("h100-sxm")
    # 128 regs x 32 lanes = 4096 per warp -> 16 warps -> 2 blocks of 8 warps
    assert resident_blocks(h100, 128, 0, 8) == (2, "registers")
    # 129 regs round up to 136 per thread (256-register units per warp): 4352 -> 15 warps -> 1 block of 8
    assert resident_blocks(h100, 129, 0, 8) == (1, "registers")
    # 100 KiB + 1 KiB reserved per block out of 228 KiB -> 2 blocks
    assert resident_blocks(h100, 32, 100 * 1024, 4) == (2, "shared memory")
    # more than a block may have: cannot launch
    assert resident_blocks(h100, 32, 228 * 1024, 4) == (0, "shared memory")
    assert resident_blocks(h100, 16, 0, 32) == (2, "threads")
    assert resident_blocks(h100, 16, 0, 1) == (32, "blocks")
    assert resident_blocks(get_spec("l4"), 16, 0, 1) == (24, "blocks")


def test_waves_and_efficiency():
    assert waves(264, 2, 132) == (1, 1.0)
    assert waves(265, 2, 132) == (2, pytest.approx(265 / 528))
    assert waves(152, 4, 132) == (1, pytest.approx(152 / 528))
    assert waves(0, 2, 132) == (0, 0.0)


def test_capture_sees_the_launch_plan_of_the_modeled_gpu():
    """A batch-1 decode splits for the spec's SM count (L4: 58, H100: 132), and nothing executes."""
    from roofline.catalogue import catalogue
    from roofline.compile_metrics import case_launches

    case = next(c for c in catalogue() if c.name == "llama3-8b/decode/b1-ctx32k")
    progs = {}
    for slug in ("h100-sxm", "l4"):
        launches = case_launches(case, get_spec(slug))
        assert [launch["kernel"] for launch in launches] == ["_paged_decode_kernel", "_merge_kernel"]
        g = launches[0]["grid"]
        progs[slug] = g[0] * g[1] * g[2]
        assert launches[0]["options"]["num_warps"] >= 1 and "BLOCK_N" in launches[0]["constexprs"]
    assert 58 <= progs["l4"] < progs["h100-sxm"] and progs["h100-sxm"] >= 132


def test_ptxas_log_and_mma_parsing():
    from roofline.compile_metrics import mma_family, parse_ptxas_log

    log = ("ptxas info    : Used 168 registers, used 1 barriers, 16 bytes cumulative stack size\n"
           "ptxas info    : 24 bytes spill stores, 8 bytes spill loads\n")
    assert parse_ptxas_log(log) == {"regs": 168, "spill_stores": 24, "spill_loads": 8}
    with pytest.raises(ValueError, match="register"):
        parse_ptxas_log("nothing here")
    assert mma_family("wgmma.mma_async.sync.aligned.m64n64k16") == "wgmma"
    assert mma_family("mma.sync.aligned.m16n8k16.row.col") == "mma.sync"
    assert mma_family("ld.global.v4.b32") == "none"


@pytest.mark.slow
def test_no_register_spills_at_catalogue_configs_for_sm90():
    """Every launch of every catalogue case, planned for an H100 and compiled for sm_90: no spill, and the
    metrics are real (registers within the hardware range, a known matrix family on the attention/GEMM
    kernels). A compile failure fails the test too (it is a finding, not a pass)."""
    from roofline.catalogue import catalogue
    from roofline.compile_metrics import cases_compile_metrics

    # compiles go through the on-disk cache: its key holds every source the result depends on
    spec = get_spec("h100-sxm")
    results = cases_compile_metrics(catalogue(), spec)
    spills, seen = [], set()
    for name, r in results.items():
        assert "error" not in r, (name, r["error"])
        assert r["launches"], name
        for m in r["launches"]:
            assert "error" not in m, (name, m)
            # a real count: ptxas never reports fewer than a few (the split-K sum kernel takes 14)
            assert 8 <= m["regs"] <= 255 and m["resident_blocks"] >= 1, (name, m)
            seen.add(m["kernel"])
            if m["spill_bytes"]:
                spills.append(f"{name}: {m['kernel']} {m['config']} spills {m['spill_bytes']} B")
    assert not spills, "\n".join(spills)
    assert {"_paged_decode_kernel", "_paged_prefill_kernel", "_grouped_gemm_int4_kernel",
            "_grouped_gemm_fp8_kernel", "_merge_kernel", "_write_kv_kernel", "_sum_splits_kernel"} <= seen
    assert results["llama3-8b/prefill/full-2k"]["main"]["mma"] == "wgmma"


def test_spill_check_catches_a_spilling_kernel():
    """Positive control for the spill test: a launch forced to 24 registers per thread (``maxnreg``) spills,
    and the metrics say so."""
    from roofline.catalogue import catalogue
    from roofline.compile_metrics import case_launches, compile_launches

    case = next(c for c in catalogue() if c.name == "mixtral/int4-w13/decode-t16")
    launch = case_launches(case, get_spec("h100-sxm"))[0]
    squeezed = dict(launch, options=dict(launch["options"], maxnreg=64))
    normal, tight = compile_launches([launch, squeezed], 90)
    assert normal["spill_stores"] == 0 and normal["regs"] > 64
    assert tight["regs"] <= 64 and tight["spill_stores"] > 0
