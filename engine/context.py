"""Per-step attention metadata, built once per step and read by every layer.

For the scheduled requests in batch order (request i computes ``q_len_i`` tokens starting at position
``start_i = num_computed_tokens``):

- ``query_start_loc`` = prefix sums of ``q_len`` (``[R + 1]``); ``seq_lens`` = ``start + q_len`` (``[R]``);
- ``positions[t]`` = absolute position of token t (RoPE);
- ``slot_mapping[t]`` = ``block_table[i, pos // block_size] * block_size + pos % block_size``;
- ``block_table`` ``[R, max_blocks]`` int32, padded with the null block (0);
- ``logits_indices`` = the last token of each request whose computed tokens catch up (those sample).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(slots=True)
class StepContext:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    block_table: torch.Tensor  # [R, max_blocks] int32
    seq_lens: torch.Tensor  # [R] int32
    query_start_loc: torch.Tensor  # [R + 1] int32
    logits_indices: torch.Tensor  # [S] int64
    is_decode: bool  # every request computes exactly one token: paged_decode applies
    num_tokens: int

    @classmethod
    def build(cls, token_ids: list[list[int]], starts: list[int], block_ids: list[list[int]], sampling: list[bool],
              block_size: int, device) -> "StepContext":
        """``token_ids[i]``: the tokens request i computes; ``starts[i]``: its first position; ``block_ids[i]``:
        its blocks; ``sampling[i]``: whether it samples this step."""
        q_lens = np.array([len(t) for t in token_ids], dtype=np.int64)
        start = np.array(starts, dtype=np.int64)
        qsl = np.zeros(len(q_lens) + 1, dtype=np.int64)
        np.cumsum(q_lens, out=qsl[1:])
        num_tokens = int(qsl[-1])
        req = np.repeat(np.arange(len(q_lens)), q_lens)
        positions = np.arange(num_tokens) - qsl[req] + start[req]
        width = max(1, max(len(b) for b in block_ids))
        table = np.zeros((len(block_ids), width), dtype=np.int64)  # 0 = the null block
        for i, ids in enumerate(block_ids):
            table[i, : len(ids)] = ids
        slots = table[req, positions // block_size] * block_size + positions % block_size
        logits_idx = (qsl[1:] - 1)[np.asarray(sampling, dtype=bool)]

        def t(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

        return cls(input_ids=t(np.concatenate([np.asarray(x, dtype=np.int64) for x in token_ids]), torch.int64),
                   positions=t(positions, torch.int64), slot_mapping=t(slots, torch.int64),
                   block_table=t(table, torch.int32), seq_lens=t(start + q_lens, torch.int32),
                   query_start_loc=t(qsl, torch.int32), logits_indices=t(logits_idx, torch.int64),
                   is_decode=bool((q_lens == 1).all()), num_tokens=num_tokens)
