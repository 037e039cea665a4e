"""A KV cache of more than 2**31 elements: write_kv, paged_prefill and paged_decode on blocks near its end.

Offsets into such a cache overflow int32. Under the interpreter an overflowed offset is a wild pointer, which
segfaults instead of raising, so the work runs in a subprocess and any crash or non-zero exit is a failure.

Memory stays small: the cache is ``torch.empty`` (pages never touched cost nothing), one tensor serves as both
K and V (key == value is written, so the two writes agree), and the child reports its peak RSS, which must stay
far below the cache's size (nothing may copy or fill the whole cache). ``write_kv`` is also driven with an
int32 ``slot_mapping`` (each slot fits 32 bits, its element offset does not), alone and fast, on a float8 cache.
"""
from __future__ import annotations

import json
import sys

import pytest

from correctness.child_process import max_rss_mib, run_child

pytestmark = pytest.mark.interpreter("the child builds the >2**31-element cache on the host (torch.empty, pages never touched) so an overflowed offset segfaults under the interpreter; on a GPU it needs a 4 GiB device cache")

HEAD_DIM, BLOCK_SIZE, NUM_KV_HEADS, NUM_Q_HEADS = 128, 16, 1, 4
NUM_BLOCKS = 2 ** 31 // (BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM) + 8  # just past 2**31 elements


def child(dtype_name: str) -> dict:
    """Runs in the subprocess: write, prefill and decode through blocks past element 2**31; returns errors."""
    from kernels.runtime import configure_triton

    configure_triton()
    import torch

    from kernels.testing.assertions import assert_close, assert_bitwise_equal
    from kernels.testing.tolerances import attention_out_atol, lse_atol
    from kernels import reference as R
    from kernels import triton as T

    dtype = getattr(torch, dtype_name)
    fp8 = dtype == torch.float8_e4m3fn
    q_dtype = torch.bfloat16 if fp8 else dtype
    cache = torch.empty((NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), dtype=dtype)
    assert cache.numel() > 2 ** 31
    gen = torch.Generator().manual_seed(0)
    # two sequences; every block past element 2**31 except one low block, in a non-sequential order
    last = NUM_BLOCKS - 1
    tables = [[last, last - 5, 3], [last - 2, last - 7]]
    seq_lens = [40, 29]
    block_table = torch.tensor([t + [-1] * (3 - len(t)) for t in tables], dtype=torch.int32)
    slots = torch.cat([torch.tensor([tables[i][t // BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE for t in range(n)],
                                    dtype=torch.int64) for i, n in enumerate(seq_lens)])
    assert int(slots.max()) * NUM_KV_HEADS * HEAD_DIM > 2 ** 31
    kv = torch.randn((len(slots), NUM_KV_HEADS, HEAD_DIM), generator=gen).to(q_dtype)
    scale = dict(k_scale=0.5, v_scale=0.5) if fp8 else {}
    T.write_kv(kv, kv, cache, cache, slots, **scale)
    expected_rows = torch.empty((len(slots), NUM_KV_HEADS, HEAD_DIM), dtype=dtype)
    scratch = torch.empty((1, len(slots), NUM_KV_HEADS, HEAD_DIM), dtype=dtype)
    R.write_kv(kv, kv, scratch, scratch, torch.arange(len(slots)), **scale)
    expected_rows.copy_(scratch[0])
    assert_bitwise_equal(cache.view(-1, NUM_KV_HEADS, HEAD_DIM)[slots], expected_rows, name="written rows")

    v_max = float(expected_rows.double().abs().max()) * scale.get("v_scale", 1.0)
    qsl = torch.tensor([0, 17, 46], dtype=torch.int32)
    q = torch.randn((46, NUM_Q_HEADS, HEAD_DIM), generator=gen).to(q_dtype)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    k_norm = float(expected_rows.double().norm(dim=-1).max()) * scale.get("k_scale", 1.0)
    logit_max = HEAD_DIM ** -0.5 * float(q.double().norm(dim=-1).max()) * k_norm
    errors = {}
    out, lse = T.paged_prefill(q, cache, cache, block_table, sl, qsl, return_lse=True, **scale)
    ref_out, ref_lse = R.paged_prefill(q, cache, cache, block_table, sl, qsl, return_lse=True, **scale)
    assert_close(out, ref_out, atol=attention_out_atol(q_dtype, v_max), name="prefill out")
    assert_close(lse, ref_lse, atol=lse_atol(q_dtype, logit_max), name="prefill lse")
    errors["prefill"] = float((out.double() - torch.from_numpy(ref_out)).abs().max())
    qd = q[qsl[1:] - 1]
    out, lse = T.paged_decode(qd, cache, cache, block_table, sl, return_lse=True, **scale)
    ref_out, ref_lse = R.paged_decode(qd, cache, cache, block_table, sl, return_lse=True, **scale)
    assert_close(out, ref_out, atol=attention_out_atol(q_dtype, v_max), name="decode out")
    assert_close(lse, ref_lse, atol=lse_atol(q_dtype, logit_max), name="decode lse")
    errors["decode"] = float((out.double() - torch.from_numpy(ref_out)).abs().max())
    errors["max_rss_mib"] = max_rss_mib()
    errors["cache_mib"] = cache.numel() * cache.element_size() / 2 ** 20
    return errors


def child_write_int32_slots() -> dict:
    """Runs in the subprocess: write_kv through an int32 slot_mapping into a float8 cache past 2**31 elements."""
    from kernels.runtime import configure_triton

    configure_triton()
    import torch

    from kernels.testing.assertions import assert_bitwise_equal
    from kernels import reference as R
    from kernels import triton as T

    cache = torch.empty((NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), dtype=torch.float8_e4m3fn)
    last = NUM_BLOCKS - 1
    # slots in the last blocks (element offsets past 2**31, up to 2**31 + 2**16) and two low ones, one skipped
    slots = torch.tensor([last * BLOCK_SIZE + 15, (last - 3) * BLOCK_SIZE, 5, -1, (last - 1) * BLOCK_SIZE + 7],
                         dtype=torch.int32)
    assert int(slots.max()) < 2 ** 31 <= int(slots.max()) * NUM_KV_HEADS * HEAD_DIM
    kv = torch.randn((len(slots), NUM_KV_HEADS, HEAD_DIM), generator=torch.Generator().manual_seed(1))
    kv = kv.to(torch.bfloat16)
    T.write_kv(kv, kv, cache, cache, slots, k_scale=0.5, v_scale=0.5)
    scratch = torch.zeros((1, len(slots), NUM_KV_HEADS, HEAD_DIM), dtype=cache.dtype)
    R.write_kv(kv, kv, scratch, scratch, torch.arange(len(slots)), k_scale=0.5, v_scale=0.5)
    written = slots >= 0
    assert_bitwise_equal(cache.view(-1, NUM_KV_HEADS, HEAD_DIM)[slots[written].long()], scratch[0][written],
                         name="written rows")
    return {"max_rss_mib": max_rss_mib(), "cache_mib": cache.numel() * cache.element_size() / 2 ** 20}


def test_write_kv_with_int32_slots_past_2_to_the_31_elements():
    result = run_child("correctness.test_large_cache", "write_int32_slots")
    assert result["max_rss_mib"] < result["cache_mib"] / 2, result


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float16"])
def test_cache_past_2_to_the_31_elements(dtype):
    result = run_child("correctness.test_large_cache", dtype)
    # nothing copied or filled the whole cache: the process stayed far below the cache's own size
    assert result["max_rss_mib"] < result["cache_mib"] / 2, result


if __name__ == "__main__":
    print(json.dumps(child_write_int32_slots() if sys.argv[1] == "write_int32_slots" else child(sys.argv[1])))
