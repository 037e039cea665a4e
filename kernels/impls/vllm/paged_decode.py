"""vLLM's ``paged_decode``: ``unified_attention`` through its split-KV (3D) kernel and ``reduce_segments``, as its
triton_attn backend runs decode batches of up to ``128 // num_kv_heads`` sequences; the LSE is rebuilt from the
per-segment maxima and exp-sums vLLM keeps (``decode_lse``). Beyond that batch size vLLM runs its 2D kernel,
which keeps none: ``return_lse`` is then declined."""
from __future__ import annotations

from kernels.impls import Launch, Unsupported, peer_launch
from kernels.impls.vllm.attention import attention_run, attention_setup, decode_lse


def vllm_paged_decode(q, k_cache, v_cache, block_table, seq_lens, **kwargs) -> torch.Tensor:
    """vLLM's ``unified_attention`` on our ``paged_decode`` arguments, through the split-KV (3D) kernel and
    ``reduce_segments``, as vLLM's backend runs decode batches of up to ``128 // num_kv_heads`` sequences."""
    return attention_run(attention_setup(q, k_cache, v_cache, block_table, seq_lens, **kwargs))


def setup(*args, **kwargs) -> Launch:
    """The timed call: ``unified_attention``'s arguments converted and its workspaces allocated here (untimed),
    its launch (3D kernel plus ``reduce_segments`` up to ``128 // num_kv_heads`` sequences, 2D above) timed."""
    return peer_launch(attention_run, attention_setup(*args, **kwargs))


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, return_lse=False, **kwargs):
    """The contract's signature; ``num_splits``/``split_size`` are ours (vLLM picks its own segments)."""
    for ours in ("validate", "max_seq_len", "batch_invariant", "num_splits", "split_size", "num_sms"):
        kwargs.pop(ours, None)
    call = attention_setup(q, k_cache, v_cache, block_table, seq_lens, **kwargs)
    out = attention_run(call)
    if not return_lse:
        return out
    try:
        return out, decode_lse(call)
    except ValueError as exc:
        raise Unsupported(f"return_lse: {exc}") from exc
