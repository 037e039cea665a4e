"""The thin serving engine: vLLM V1's loop (schedule -> execute -> update) over the project's kernels.

One role per file: ``request`` (state and counters), ``block_pool`` (blocks, free queue, prefix-cache map),
``kv_cache_manager`` (per-request block lists, hits, allocation), ``scheduler`` (who runs this step, how many
tokens, preemption), ``context`` (per-step attention metadata), ``backend`` (triton or reference kernels behind
one adapter), ``model`` (a tiny Llama-style MoE decoder), ``model_runner`` (inputs, KV caches, forward),
``sampler`` (tokens and stop checks), ``stats`` (NVTX ranges, per-step stats, latency), ``llm_engine`` (the
public ``LLMEngine``), ``cli`` (``servekernels generate``).

Names resolve lazily so ``import engine`` imports neither torch nor triton.
"""
from __future__ import annotations

from kernels.lazy import lazy_names

_MODULES = {
    "ModelConfig": "config",
    "EngineConfig": "config",
    "SamplingParams": "sampling_params",
    "LLMEngine": "llm_engine",
    "RequestOutput": "llm_engine",
    "Request": "request",
    "RequestStatus": "request",
    "ByteTokenizer": "tokenizer",
}

__all__ = sorted(_MODULES)
__getattr__ = lazy_names(__name__, _MODULES)
