"""Per-GPU truth in the report: counted shapes on the full shape's tile path, merge counted >= its minimum,
stores credited to the argument they write, launch plans and goals for the modeled GPU, the timing model."""
from __future__ import annotations

import pytest

from kernels.runtime import interpreter_enabled
from roofline.catalogue import catalogue, case_cost
from roofline.specs import get_spec

pytestmark = [pytest.mark.skipif(not interpreter_enabled(), reason="counting needs the Triton interpreter"),
              pytest.mark.interpreter("counted traffic: the counting hooks patch the Triton interpreter")]
CASES = {c.name: c for c in catalogue()}


def test_counted_shapes_use_the_full_shapes_gemm_tile_regime():
    """MoE at T = 1024 is counted where its expert GEMMs run the prefill tiles, as at full size."""
    from kernels.triton.gemm_configs import regime

    for c in CASES.values():
        if c.op == "fused_moe":
            rows = lambda s: s["tokens"] * s["top_k"]  # noqa: E731
        elif c.op.startswith("grouped_gemm"):
            rows = lambda s: s["tokens"]  # noqa: E731
        else:
            continue
        assert regime(rows(c.small), c.small["experts"]) == regime(rows(c.shape), c.shape["experts"]), c.name


def test_merge_states_counted_bytes_never_below_the_minimum():
    from roofline.report import count_case

    for name in ("llama3-8b/merge/decode-b64-s2", "llama3-8b/merge/prefill-t2k-s2"):
        got = count_case(CASES[name])
        assert got["parity"] == "pass"
        assert got["bytes_counted_small"] >= got["bytes_min_small"], name
        assert case_cost("merge_states", CASES[name].small).bytes_min == got["bytes_min_small"]


def test_stores_are_credited_to_the_argument_they_write():
    import torch

    import kernels.triton as kt
    from kernels.testing.paged import make_paged_batch
    from roofline.attribution import by_argument
    from roofline.counting import count_traffic

    heads = dict(num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16)
    b = make_paged_batch([40], [8], **heads)
    with count_traffic() as c:
        kt.paged_prefill(*b.prefill_args())  # no LSE requested: the launcher passes out as lse's placeholder
    stores = c.by_argument("store")
    assert stores.get("out_ptr", 0) == 8 * 4 * 32 * b.q.element_size() and "lse_ptr" not in stores
    d = make_paged_batch([300], None, **heads)
    with count_traffic() as c:
        kt.paged_decode(*d.decode_args(), num_splits=3)
    by = by_argument(c)
    assert {"paged_decode.out_ptr", "merge.out_ptr"} <= set(by) and "out_ptr" not in by
    assert by["merge.out_ptr"] == 4 * 32 * torch.tensor([], dtype=d.q.dtype).element_size()


def test_decode_plans_for_the_modeled_gpus_sms():
    from roofline.report import full_programs

    case = CASES["llama3-8b/decode/b1-ctx32k"]
    h100, h200, l4 = (full_programs(case, get_spec(s)) for s in ("h100-sxm", "h200", "l4"))
    merge = 32 * 4  # the merge kernel's programs: per query head, the head dim cut in 4 (few rows)
    # B programs per SM, at least, B covering each GPU's memory latency (timing_model.latency_blocks): an L4's
    # 300 GB/s over 58 SMs needs 1 block of 4 warps, an H100 1.86, an H200 (4.8 TB/s over the same 132 SMs) 2.66
    for programs, sms, b in ((l4, 58, 1), (h100, 132, 1.86), (h200, 132, 2.66)):
        assert sms * b <= programs - merge < 2 * sms * b, (programs, sms, b)


def test_goals_name_their_gpu_and_bandwidth_only_when_measured():
    from roofline.report import goal_results

    row = {"case": "x", "goals": ["decode_traffic", "decode_bw"], "counted_ratio": 1.05, "bytes_min": 1e9,
           "t_measured_us": 400.0}
    modeled = goal_results([row], get_spec("l4"), measured=False)
    assert [g["goal"] for g in modeled] == ["decode_traffic"] and modeled[0]["gpu"] == "l4"
    measured = goal_results([row], get_spec("l4"), measured=True)
    bw = next(g for g in measured if g["goal"] == "decode_bw")
    assert bw["value"] == pytest.approx(1e9 / 400e-6 / 300e9) and bw["result"] == "met"  # on an L4, not "n/a"


def test_t_model_is_never_below_counted_or_flop_time_and_stretches_partial_waves():
    from roofline.timing_model import modeled_times

    spec = get_spec("h100-sxm")
    row = {"bytes_counted": 1e9, "flops": 1e12, "compute_dtype": "bf16"}
    full = {"launches": [{"kernel": "k", "programs": 264, "resident_blocks": 2, "num_warps": 8, "mma": "wgmma"}]}
    t = modeled_times(row, full, spec)
    t_c, t_f = 1e9 / spec.hbm_bytes_per_s * 1e6, 1e12 / spec.peak("bf16") * 1e6
    assert t["t_model_us"] == pytest.approx(max(t_c, t_f))  # full waves, enough warps: the roof of counted bytes
    thin = {"launches": [dict(full["launches"][0], programs=133, num_warps=1)]}
    t2 = modeled_times(row, thin, spec)
    assert t2["t_model_us"] > t["t_model_us"] and t2["t_model_us"] >= max(t_c, t_f)
    assert modeled_times(row, None, spec)["t_model_us"] is None  # no compile metrics: no t_model, said why
