"""vLLM's ``paged_prefill``: ``unified_attention`` (2D kernel). It returns no LSE: ``return_lse=True`` is declined
(``UNSUPPORTED``), so ``out`` is judged and ``lse`` reported as not provided."""
from __future__ import annotations

from kernels.impls import Launch, Unsupported, peer_launch
from kernels.impls.vllm.attention import attention_run, attention_setup

UNSUPPORTED = {"return_lse": "vLLM's unified_attention returns no LSE (its 2D kernel keeps none)"}


def vllm_paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, **kwargs) -> torch.Tensor:
    """vLLM's ``unified_attention`` (2D kernel) on our ``paged_prefill`` arguments; returns ``out`` only."""
    return attention_run(attention_setup(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, **kwargs))


def setup(*args, **kwargs) -> Launch:
    """The timed call: ``unified_attention``'s arguments converted here (untimed), its 2D launch timed."""
    return peer_launch(attention_run, attention_setup(*args, **kwargs))


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, return_lse=False, **kwargs):
    """The contract's signature (``validate``, ``batch_invariant`` and the host hints are ours: ignored)."""
    if return_lse:
        raise Unsupported(f"return_lse: {UNSUPPORTED['return_lse']}")
    for ours in ("validate", "max_seq_len", "max_query_len", "batch_invariant"):
        kwargs.pop(ours, None)
    return vllm_paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, **kwargs)
