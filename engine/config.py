"""Small self-checking configs: the model's shape and the engine's memory and batching limits."""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float32", "float16")
WEIGHT_QUANTS = (None, "int4", "fp8")


def _positive(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")


@dataclass(slots=True)
class ModelConfig:
    """A Llama-style decoder (RMSNorm, RoPE, GQA attention, MoE SwiGLU MLP with a router), random weights
    drawn from ``seed``. The default is the tiny model the tests use. ``weight_quant`` quantizes the expert
    weights (the grouped-GEMM path): "int4" (symmetric, group 32) or "fp8" (128x128 blocks, per-token-group
    activations); attention projections stay in ``dtype``. Token ids 0..255 are bytes; ``eos_token_id`` = 256.
    """

    vocab_size: int = 260
    hidden_size: int = 64
    num_layers: int = 2
    num_q_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 64
    num_experts: int = 4
    top_k: int = 2
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    max_model_len: int = 1024
    weight_quant: str | None = None
    dtype: str = "float32"
    seed: int = 0
    eos_token_id: int = 256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_q_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "num_experts", "top_k", "max_model_len"):
            _positive(name, getattr(self, name))
        _positive("seed", self.seed, 0)
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size: the byte tokenizer needs 256 byte ids plus EOS, got {self.vocab_size}")
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"eos_token_id: must be in [0, {self.vocab_size}), got {self.eos_token_id}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads: {self.num_q_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 8 or not 32 <= self.head_dim <= 256:
            raise ValueError(f"head_dim: must be a multiple of 8 in 32..256 (the attention kernels), "
                             f"got {self.head_dim}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k: {self.top_k} is more than num_experts {self.num_experts}")
        if self.weight_quant not in WEIGHT_QUANTS:
            raise ValueError(f"weight_quant: must be one of {WEIGHT_QUANTS}, got {self.weight_quant!r}")
        if self.weight_quant == "int4" and (self.hidden_size % 32 or self.intermediate_size % 32):
            raise ValueError("weight_quant: int4 groups of 32 need hidden_size and intermediate_size multiples of 32, "
                             f"got {self.hidden_size} and {self.intermediate_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {DTYPES}, got {self.dtype!r}")
        if not self.rope_theta > 0 or not self.rms_eps > 0:
            raise ValueError(f"rope_theta, rms_eps: must be > 0, got {self.rope_theta}, {self.rms_eps}")


@dataclass(slots=True)
class EngineConfig:
    """Memory and batching limits of one engine (vLLM's cache and scheduler configs in one).

    ``num_blocks`` counts the null block, so ``num_blocks - 1`` blocks hold KV. ``long_prefill_token_threshold``
    (0 = off) caps the tokens one request may compute in a step: long prompts are chunked. A step never holds
    more than ``max_num_batched_tokens`` tokens or more than ``max_num_seqs`` requests. ``batch_invariant``
    runs every kernel with ``batch_invariant=True`` (see ``engine.backend``).
    """

    block_size: int = 16
    num_blocks: int = 256
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 256
    long_prefill_token_threshold: int = 0
    enable_prefix_caching: bool = True
    max_model_len: int = 1024
    seed: int = 0
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        _positive("block_size", self.block_size)
        if self.block_size > 256:
            raise ValueError(f"block_size: must be <= 256 (the attention kernels), got {self.block_size}")
        _positive("num_blocks", self.num_blocks, 2)
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _positive("long_prefill_token_threshold", self.long_prefill_token_threshold, 0)
        _positive("max_model_len", self.max_model_len, 2)
        _positive("seed", self.seed, 0)
        if not isinstance(self.batch_invariant, bool):
            raise ValueError(f"batch_invariant: must be a bool, got {self.batch_invariant!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(f"enable_prefix_caching: must be a bool, got {self.enable_prefix_caching!r}")
