"""Cost models checked by hand on small shapes (every expected figure below is worked out in the comment)."""
from __future__ import annotations

import pytest

from roofline import cost
from roofline.specs import get_spec

pytestmark = pytest.mark.host_only("cost models: arithmetic only")


def test_decode_flops_and_bytes_by_hand():
    # 2 seqs (5 and 3 tokens), Hq 4, Hkv 2, D 8, block 4, bf16
    c = cost.paged_decode([5, 3], num_q_heads=4, num_kv_heads=2, head_dim=8, block_size=4, dtype="bfloat16")
    assert c.flops == 4 * 8 * 4 * 8  # 4 * sum(seq_len) * Hq * D = 1024
    assert c.breakdown == {"q": 2 * 4 * 8 * 2, "kv_cache": 2 * 8 * 2 * 8 * 2, "block_table": (2 + 1) * 4,
                           "seq_lens": 2 * 4, "out": 2 * 4 * 8 * 2}
    assert c.bytes_min == 128 + 512 + 12 + 8 + 128
    # an fp8 cache halves the K/V bytes only; LSE adds Hq * 4 per sequence
    c8 = cost.paged_decode([5, 3], num_q_heads=4, num_kv_heads=2, head_dim=8, block_size=4, dtype="bfloat16",
                           kv_dtype="float8_e4m3fn", return_lse=True)
    assert c8.breakdown["kv_cache"] == 256 and c8.breakdown["lse"] == 2 * 4 * 4


def test_prefill_causal_counts_visible_pairs():
    # full prefill of 4 tokens: pairs 1+2+3+4 = 10; chunk of 2 at the end of 5: positions 3, 4 -> 4+5 = 9
    c = cost.paged_prefill([4, 2], [4, 5], num_q_heads=2, num_kv_heads=1, head_dim=8, block_size=2)
    assert c.flops == 4 * (10 + 9) * 2 * 8
    assert c.breakdown["kv_cache"] == 2 * (4 + 5) * 1 * 8 * 2
    assert c.breakdown["block_table"] == (2 + 3) * 4
    assert c.breakdown["q"] == c.breakdown["out"] == 6 * 2 * 8 * 2
    # a long full prefill counts about half the square
    big = cost.paged_prefill([1024], [1024], num_q_heads=1, num_kv_heads=1, head_dim=64, block_size=16)
    assert big.flops == pytest.approx(4 * 1024 * 1024 * 64 / 2, rel=1e-3)


def test_prefill_sliding_window():
    # 4 queries at 0..3 with W=2 see 1, 2, 2, 2 keys; all 4 keys are visible to some query
    c = cost.paged_prefill([4], [4], num_q_heads=1, num_kv_heads=1, head_dim=8, block_size=4, sliding_window=2)
    assert c.flops == 4 * 7 * 8
    # a 1-query chunk at position 9 with W=3 sees keys 7..9 only: 3 keys, in blocks 1 and 2 (block size 4)
    c = cost.paged_prefill([1], [10], num_q_heads=1, num_kv_heads=1, head_dim=8, block_size=4, sliding_window=3)
    assert c.breakdown["kv_cache"] == 2 * 3 * 8 * 2 and c.breakdown["block_table"] == 2 * 4


def test_fa2_model_rereads_kv_per_query_tile_and_head():
    # 256 queries (full prefill), tiles of 128: tile 0 sees 128 keys, tile 1 sees 256; Hq = 2, D = 8, bf16
    b = cost.prefill_fa2_bytes([256], [256], num_q_heads=2, head_dim=8, block_m=128)
    assert b == (128 + 256) * 2 * 8 * 2 * 2 + 2 * 256 * 2 * 8 * 2


def test_merge_states():
    c = cost.merge_states(3, 5, 2, 8, dtype="float16")
    assert c.flops == 2 * 3 * 10 * 8 + 4 * 3 * 10
    assert c.bytes_min == 3 * 10 * 8 * 2 + 3 * 10 * 4 + 10 * 8 * 2 + 10 * 4


def test_write_kv_skipped_tokens_move_nothing():
    c = cost.write_kv(6, num_kv_heads=2, head_dim=8, dtype="bfloat16", kv_dtype="float8_e4m3fn", valid_tokens=4)
    assert c.breakdown == {"key_value": 2 * 4 * 2 * 8 * 2, "slot_mapping": 6 * 8, "kv_cache": 2 * 4 * 2 * 8}
    assert c.flops == 2 * 4 * 2 * 8  # one divide by the scale per stored fp8 element
    assert cost.write_kv(6, num_kv_heads=2, head_dim=8).flops == 0


def test_grouped_gemms_read_active_experts_once():
    # groups [3, 0, 2]: T = 5, 2 active experts, N = 16, K = 32
    d = cost.grouped_gemm([3, 0, 2], 16, 32, dtype="bfloat16")
    assert d.flops == 2 * 5 * 16 * 32
    assert d.breakdown == {"a": 5 * 32 * 2, "weight": 2 * 16 * 32 * 2, "group_offsets": 4 * 4, "out": 5 * 16 * 2}
    i4 = cost.grouped_gemm_int4([3, 0, 2], 16, 32, group_size=32, zero_point=True)
    assert i4.breakdown["weight"] == 2 * 16 * 16 + 2 * 16 * 1 * 4 + 2 * 16 * 1
    assert i4.compute_dtype == "bfloat16"
    f8 = cost.grouped_gemm_fp8([3, 0, 2], 16, 32, granularity="block", block_size=(128, 128))
    assert f8.breakdown["weight"] == 2 * 16 * 32 + 2 * 1 * 4
    assert f8.breakdown["a"] == 5 * 32 and f8.breakdown["a_scales"] == 5 * 1 * 4
    assert f8.compute_dtype == "float8_e4m3fn"
    ch = cost.grouped_gemm_fp8([3, 0, 2], 16, 32, granularity="channel")
    assert ch.breakdown["weight"] == 2 * 16 * 32 + 2 * 16 * 4


def test_fused_moe():
    # T 2, top-2 over 4 experts, pairs routed [1, 0, 3, 0]; H 8, I 4, bf16
    c = cost.fused_moe(2, 8, 4, [1, 0, 3, 0], 2)
    p = 4
    assert c.flops == 2 * p * 8 * 8 + 2 * p * 8 * 4 + 5 * p * 4 + 2 * p * 8
    assert c.breakdown["w13"] == 2 * 8 * 8 * 2 and c.breakdown["w2"] == 2 * 8 * 4 * 2
    assert c.breakdown["x"] == c.breakdown["out"] == 2 * 8 * 2
    with pytest.raises(ValueError, match="expert_counts"):
        cost.fused_moe(2, 8, 4, [1, 0, 2, 0], 2)


def test_roof_picks_the_binding_limit():
    h = get_spec("h100-sxm")
    # decode is memory-bound: intensity ~ Hq/Hkv FLOPs per K/V byte
    dec = cost.paged_decode([4096], num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=16)
    r = dec.roof(h)
    assert r["bound"] == "memory" and r["t_roof_s"] == pytest.approx(dec.bytes_min / 3.35e12)
    # a big square GEMM is compute-bound
    g = cost.grouped_gemm([4096], 4096, 4096)
    r = g.roof(h)
    assert r["bound"] == "compute" and r["t_roof_s"] == pytest.approx(2 * 4096 ** 3 / 989.4e12)
    assert g.intensity == pytest.approx(g.flops / g.bytes_min)
