"""vLLM's ``mla_decode``: ``decode_attention_fwd`` (``vllm/v1/attention/ops/triton_decode_attention.py``: the
grouped stage-1 kernel with ``is_mla=True``, then its stage-2 reduction) called as vLLM's ``triton_mla``
backend calls it in ``TritonMLAImpl.forward_mqa``:

- one ``[num_blocks, block_size, 1, R + P]`` latent cache as K (its first R columns also V), ``q`` the
  ``[num_tokens, H, R + P]`` concatenation of ``q_nope`` and ``q_pe``: slices of one tensor are passed as that
  tensor (vLLM's layout, no copy), separate ones are concatenated first (a copy vLLM never makes);
- ``num_kv_splits`` from the backend's ``_compute_num_kv_splits`` (a power of two of ``max_seq_len // 512``,
  at most 2 per SM; 132 SMs without a GPU), one split under ``batch_invariant`` (``VLLM_BATCH_INVARIANT``);
- multi-token rows as the backend flattens them: one decode row per query, its block-table row repeated and
  its ``seq_len`` cut to the query's position (``seq_len - q_len + j + 1``);
- ``kv_scale`` as both ``k_scale`` and ``v_scale`` (the backend passes ``layer._k_scale`` twice);
- the LSE into a tensor of q's dtype, as the backend allocates it (``lse = torch.zeros(B, H, dtype=q.dtype)``),
  widened to float32 for the contract: its values carry that rounding.
"""
from __future__ import annotations

import torch
import triton

from kernels.impls import Launch, peer_launch
from kernels.impls.vllm.env import load

SM_COUNT_WITHOUT_GPU = 132
_MIN_WORK_PER_SPLIT = 512  # vllm/v1/attention/backends/mla/triton_mla.py
_SPLIT_OCCUPANCY_MULTIPLIER = 2

UNSUPPORTED = {}


def num_kv_splits(max_seq_len: int, sm_count: int) -> int:
    """The backend's ``_compute_num_kv_splits``."""
    ideal = triton.next_power_of_2(max(1, max_seq_len // _MIN_WORK_PER_SPLIT))
    return min(ideal, sm_count * _SPLIT_OCCUPANCY_MULTIPLIER)


def _joined(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[..., A + B]``: the tensor ``a`` and ``b`` are the two adjacent slices of (no copy), else their copy."""
    width = a.shape[-1] + b.shape[-1]
    if (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.stride() == b.stride()
            and b.data_ptr() == a.data_ptr() + a.shape[-1] * a.element_size() and a.stride(-1) == 1
            and a.stride(-2) >= width):
        return a.as_strided((*a.shape[:-1], width), a.stride())
    return torch.cat([a, b], dim=-1)


def mla_setup(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
              query_start_loc=None, batch_invariant=False, **ours) -> dict:
    """Everything one ``decode_attention_fwd`` call takes (layout joins, flattened rows, allocations), nothing
    launched: the timing harness's untimed setup. Our own keywords (``num_splits``, ``split_size``, the
    ``validate=False`` hints) are dropped: vLLM picks its own splits."""
    dev = q_nope.device
    q = _joined(q_nope, q_pe)
    rank = kv_c_cache.shape[-1]
    kv = _joined(kv_c_cache, k_pe_cache).unsqueeze(2)  # [num_blocks, block_size, 1, R + P]
    table, lens = block_table, seq_lens
    if query_start_loc is not None:  # one decode row per query, causal extents (the backend's flattening)
        q_lens = (query_start_loc[1:] - query_start_loc[:-1]).long()
        table = block_table.repeat_interleave(q_lens, dim=0)
        seq_of_row = torch.repeat_interleave(torch.arange(len(q_lens), device=dev), q_lens)
        j = torch.arange(q.shape[0], device=dev) - query_start_loc[:-1].long()[seq_of_row]
        lens = (seq_lens.long()[seq_of_row] - q_lens[seq_of_row] + j + 1).to(seq_lens.dtype)
    b, h = q.shape[0], q.shape[1]
    sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else SM_COUNT_WITHOUT_GPU
    max_len = int(lens.max()) if lens.numel() else 0
    splits = 1 if batch_invariant else num_kv_splits(max_len, sms)
    scale_t = torch.as_tensor(kv_scale, dtype=torch.float32, device=dev).reshape(-1)[:1].clone()
    return dict(q=q, k_buffer=kv, v_buffer=kv[..., :rank], o=torch.zeros(b, h, rank, dtype=q.dtype, device=dev),
                lse=torch.zeros(b, h, dtype=q.dtype, device=dev), req_to_token=table, b_seq_len=lens,
                attn_logits=torch.empty((b, h, splits, rank + 1), dtype=torch.float32, device=dev),
                num_kv_splits=splits, sm_scale=float(scale), page_size=kv.shape[1], k_scale=scale_t,
                v_scale=scale_t, is_mla=True)


def mla_run(state: dict):
    """The timed launch sequence: vLLM's two kernels. Returns ``(out, lse in q's dtype)``."""
    if state["q"].shape[0]:
        load().decode_attention_fwd(**state)
    return state["o"], state["lse"]


def _out(result):
    return result[0]


def setup(*args, **kwargs) -> Launch:
    """The timed call: the layout joins, flattened rows and workspaces here (untimed), vLLM's two kernels timed;
    the check reads the output."""
    return peer_launch(mla_run, mla_setup(*args, **kwargs), _out)


def mla_decode(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
               num_splits=None, split_size=None, query_start_loc=None, return_lse=False, batch_invariant=False,
               **ours):
    """The contract's signature; ``num_splits``/``split_size`` are ours (vLLM picks its own splits)."""
    out, lse = mla_run(mla_setup(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, scale=scale,
                                 kv_scale=kv_scale, query_start_loc=query_start_loc, batch_invariant=batch_invariant))
    return (out, lse.float()) if return_lse else out
