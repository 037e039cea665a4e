"""Sliding-window attention with the window's oldest key at every offset inside a key tile.

``paged_prefill`` skips the key tiles entirely before a query tile's window: its key loop starts at the tile
holding the first query's oldest visible key, ``context + first_q - W + 1`` rounded down to ``BLOCK_N``. An
off-by-one there loses that key only when it is the last key of a tile (one window start in ``BLOCK_N``), which
the ragged parity batches rarely hit. Here the window start takes 130 consecutive values (every residue modulo
any power-of-two tile up to 128 keys, whatever tile the launcher picks), with a small window (W = 5), so a
dropped key moves a query's output by about a fifth of |V|; ``paged_decode`` gets the same sweep.
"""
from __future__ import annotations

import numpy as np
import pytest

from kernels.testing.assertions import assert_close
from kernels.testing.paged import make_paged_batch
from kernels.testing.tolerances import attention_out_atol, lse_atol
from kernels import reference as R
from correctness.impl import T

WINDOW = 5
STARTS = np.arange(130)  # the first query's oldest visible key: 0, 1, ..., 129


@pytest.mark.meta_unsupported("derives the window offsets from the seq_lens values before the launch")
def test_prefill_window_start_at_every_tile_offset(device):
    q_len = 3  # the first query of each chunk sets the tile's key range; the two after it see later windows
    seq_lens = STARTS + WINDOW - 1 + q_len  # first query at seq_len - q_len, its window starts at STARTS
    batch = make_paged_batch(seq_lens, np.full_like(seq_lens, q_len), num_q_heads=2, num_kv_heads=1, head_dim=32,
                             block_size=16, dtype="float32", sliding_window=WINDOW, device=device)
    first_q = batch.seq_lens.cpu().numpy() - q_len
    assert (first_q - WINDOW + 1 == STARTS).all()
    out, lse = T.paged_prefill(*batch.prefill_args(), return_lse=True, **batch.kwargs)
    ref_out, ref_lse = R.paged_prefill(*batch.prefill_args(), return_lse=True, **batch.kwargs)
    magnitude, logit_max = batch.attention_scales()  # one pass for both tolerances
    assert_close(out, ref_out, atol=attention_out_atol("float32", magnitude), name="out")
    assert_close(lse, ref_lse, atol=lse_atol("float32", logit_max), name="lse")


def test_decode_window_start_at_every_tile_offset(device):
    seq_lens = STARTS + WINDOW
    batch = make_paged_batch(seq_lens, num_q_heads=2, num_kv_heads=1, head_dim=32, block_size=16, dtype="float32",
                             sliding_window=WINDOW, device=device)
    out, lse = T.paged_decode(*batch.decode_args(), return_lse=True, **batch.kwargs)
    ref_out, ref_lse = R.paged_decode(*batch.decode_args(), return_lse=True, **batch.kwargs)
    magnitude, logit_max = batch.attention_scales(decode=True)  # one pass for both tolerances
    assert_close(out, ref_out, atol=attention_out_atol("float32", magnitude), name="out")
    assert_close(lse, ref_lse, atol=lse_atol("float32", logit_max), name="lse")
