"""vLLM's ``unified_attention`` on our paged attention arguments (shared by ``paged_decode.py`` and
``paged_prefill.py``).

- block table: vLLM loads block-table entries up to one KV tile past a sequence's end WITHOUT a mask (the
  K/V loads through them are masked); vLLM's metadata builder over-allocates its table, ours may end exactly
  at the last needed block. ``padded_block_table`` appends zero columns so those loads stay in bounds.
- sinks: passed through as they are (``unified_attention(sinks=...)``, float32 ``[num_q_heads]``, natural-log
  logits): its 2D kernel and segment 0 of its 3D kernel open the softmax at the sink, so ``decode_lse`` (built
  from the segments' maxima and sums) includes it.
"""
from __future__ import annotations

import torch

from kernels.impls.vllm.env import load

# vLLM's decode path (triton_attn backend): 16 softmax segments, and the 3D (split) kernel when
# num_seqs <= MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads
NUM_PAR_SOFTMAX_SEGMENTS = 16
MIN_LAUNCH_GRID_SIZE_2D = 128
MAX_KV_TILE = 32  # the largest KV tile unified_attention picks for these shapes (128 only for head 256 on sm100)



def window_size(sliding_window: int | None) -> tuple[int, int]:
    """Our ``sliding_window=W`` (W keys, itself included) as vLLM's ``(left, right)``; ``(-1, -1)`` = none."""
    return (-1, -1) if sliding_window is None else (int(sliding_window) - 1, 0)


def softcap_arg(soft_cap: float | None) -> float:
    return 0.0 if soft_cap is None else float(soft_cap)


def padded_block_table(block_table: torch.Tensor, block_size: int, tile: int = MAX_KV_TILE) -> torch.Tensor:
    """``block_table`` with ``ceil(tile / block_size) + 1`` zero columns appended (see the module docstring)."""
    extra = -(-tile // block_size) + 1
    pad = torch.zeros((block_table.shape[0], extra), dtype=block_table.dtype, device=block_table.device)
    return torch.cat([block_table, pad], dim=1)


def _scale_tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)[:1].clone()


def _attention_call(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale, sliding_window,
                    soft_cap, k_scale, v_scale, decode_3d: bool, sinks=None) -> dict:
    """The keyword arguments of one ``unified_attention`` call (allocations included; nothing launched)."""
    vl = load()
    num_tokens, num_heads, head_dim = q.shape
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    call = dict(
        q=q, k=k_cache, v=v_cache, out=torch.empty_like(q),
        cu_seqlens_q=query_start_loc, max_seqlen_q=int(q_lens.max()) if len(q_lens) else 0,
        seqused_k=seq_lens, max_seqlen_k=int(seq_lens.max()) if len(seq_lens) else 0,
        softmax_scale=float(scale if scale is not None else head_dim ** -0.5), causal=True,
        window_size=window_size(sliding_window), block_table=padded_block_table(block_table, k_cache.shape[1]),
        softcap=softcap_arg(soft_cap), q_descale=None,
        k_descale=_scale_tensor(k_scale, q.device) if fp8 else None,
        v_descale=_scale_tensor(v_scale, q.device) if fp8 else None,
        kv_quant_mode=vl.KVQuantMode.FP8_PER_TENSOR if fp8 else vl.KVQuantMode.NONE,
        sinks=sinks,
    )
    num_kv_heads = k_cache.shape[2]
    if decode_3d:  # what vLLM's triton_attn backend hands a decode batch: the split (3D) kernel
        segs, pad = NUM_PAR_SOFTMAX_SEGMENTS, triton_next_pow2(head_dim)
        call.update(
            seq_threshold_3D=MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads,
            num_par_softmax_segments=segs,
            softmax_segm_output=torch.empty((num_tokens, num_heads, segs, pad), dtype=torch.float32, device=q.device),
            softmax_segm_max=torch.empty((num_tokens, num_heads, segs), dtype=torch.float32, device=q.device),
            softmax_segm_expsum=torch.empty((num_tokens, num_heads, segs), dtype=torch.float32, device=q.device),
        )
    return call


def triton_next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def attention_setup(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, *, scale=None,
                    sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, sinks=None, **ignored) -> dict:
    """Convert our paged prefill (``query_start_loc`` given) or decode (``q [num_seqs, H, D]``) call into
    ``unified_attention``'s arguments. ``ignored``: our decode's ``num_splits``/``split_size``/``return_lse``
    (vLLM picks its own split; it has no LSE output)."""
    decode = query_start_loc is None
    if decode:
        query_start_loc = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return _attention_call(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=scale,
                           sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale,
                           decode_3d=decode, sinks=sinks)


def attention_run(call: dict) -> torch.Tensor:
    load().unified_attention(**call)
    return call["out"]


def decode_lse(call: dict) -> torch.Tensor:
    """The natural-log LSE ``[num_seqs, num_heads]`` of a decode call that ran vLLM's split (3D) kernel, from its
    per-segment maxima and exp-sums (vLLM returns no LSE; its 3D kernel keeps exactly what one needs):
    ``lse = M + log(sum_s expsum_s * exp(max_s - M))`` over the segments ``reduce_segments`` reads."""
    seg_max, seg_sum = call.get("softmax_segm_max"), call.get("softmax_segm_expsum")
    if seg_max is None or call["max_seqlen_q"] > 1 or len(call["seqused_k"]) > call["seq_threshold_3D"]:
        raise ValueError("call: decode_lse needs a decode call that ran vLLM's 3D kernel")
    segs = call["num_par_softmax_segments"]
    window = call["window_size"][0] + 1 if call["window_size"][0] >= 0 else 0
    tile = load().get_tile_size(call["q"].shape[2], window, call["q"].element_size(), is_prefill=False)
    seq_lens = call["seqused_k"].to(torch.int64)
    tiles_per_seg = -(-seq_lens // (segs * tile))
    active = -(-seq_lens // (tiles_per_seg.clamp(min=1) * tile))  # the segments reduce_segments reads
    used = torch.arange(segs, device=seq_lens.device)[None, :] < active[:, None]  # [num_seqs, segs]
    m = torch.where(used[:, None, :], seg_max, float("-inf"))
    big = m.amax(dim=-1, keepdim=True)
    big = torch.where(torch.isfinite(big), big, torch.zeros_like(big))
    total = (torch.where(used[:, None, :], seg_sum, 0.0) * torch.exp(m - big)).sum(-1)
    return torch.where(total > 0, big[..., 0] + torch.log(total), torch.full_like(total, float("-inf")))
