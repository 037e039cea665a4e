"""The real models the catalogue and the check cases are shaped after, and the shape builders the specs' cases use.

Models: Llama-3-8B attention (32 query / 8 KV heads x 128), Llama-3-70B (64 / 8 x 128), Qwen2.5-7B (28 / 4 x 128),
a Gemma-2-like local layer (16 / 8 x 256), gpt-oss-120b attention (64 / 8 x 64, a learned sink per query head, a
128-token window on every other layer), Mixtral-8x7B experts (E 8, H 4096, I 14336, top-2), Qwen3-30B-A3B
experts (E 128, H 2048, I 768, top-8), gpt-oss-20b / 120b experts (E 32 / 128, H = I = 2880, top-4), DeepSeek-V3
and Kimi K2 latent attention (R 512, P 64; 128 / 64 query heads). Ragged lengths and expert counts are deterministic functions of a seed.
"""
from __future__ import annotations

import numpy as np

LLAMA3_8B = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)
LLAMA3_70B = dict(num_q_heads=64, num_kv_heads=8, head_dim=128)
QWEN25_7B = dict(num_q_heads=28, num_kv_heads=4, head_dim=128)
GEMMA2_LIKE = dict(num_q_heads=16, num_kv_heads=8, head_dim=256)
GPT_OSS_120B_ATTN = dict(num_q_heads=64, num_kv_heads=8, head_dim=64)
GPT_OSS_WINDOW = 128  # gpt-oss's sliding-window layers (every other one) see 128 keys
# MLA after weight absorption (kv_lora_rank R, rope dim P; the scale from the un-absorbed q/k head, 128 + 64):
# DeepSeek-V3/R1 has 128 query heads (16 per GPU at TP8), Kimi K2 (the same attention) 64
DEEPSEEK_V3_MLA = dict(rank=512, rope=64, scale=(128 + 64) ** -0.5)
KIMI_K2_MLA = dict(rank=512, rope=64, scale=(128 + 64) ** -0.5)
MIXTRAL = dict(experts=8, hidden=4096, intermediate=14336, top_k=2)
QWEN3_MOE = dict(experts=128, hidden=2048, intermediate=768, top_k=8)
# gpt-oss (its config.json: hidden_size = intermediate_size = 2880, num_local_experts 32 / 128, experts_per_token 4;
# MXFP4 experts with biases, the interleaved clamped SwiGLU ``swiglu_oai``)
GPT_OSS_20B = dict(experts=32, hidden=2880, intermediate=2880, top_k=4)
GPT_OSS_120B = dict(experts=128, hidden=2880, intermediate=2880, top_k=4)

# fused_moe's small (parity) shape at a prefill-sized T uses this many tokens: 160 rows over 8 experts, past the
# grouped GEMMs' decode regime (<= 16 rows per expert, kernels/triton/gemm_configs.py), so its expert GEMMs run the
# prefill tiles the full-size T = 1024 call uses (a test checks the regimes agree); its traffic is counted at full size
MOE_PREFILL_COUNT_TOKENS = 80


def ragged_lens(num_seqs: int, ctx: int, seed: int = 0) -> list[int]:
    """``num_seqs`` context lengths in ``(7/8 ctx, ctx]`` (ragged, deterministic); one sequence gets exactly ctx."""
    if num_seqs == 1:
        return [ctx]
    rng = np.random.default_rng(seed)
    lens = ctx - rng.integers(0, max(ctx // 8, 1), size=num_seqs)
    lens[0] = ctx
    return [int(v) for v in lens]


def expert_counts(tokens: int, experts: int, top_k: int, seed: int = 0) -> list[int]:
    """(token, slot) pairs per expert for ``tokens`` routed top-k with a skewed router (per-expert bias ~ N(0, 1)):
    realistic imbalance, some experts idle at decode sizes."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((tokens, experts)) + rng.standard_normal(experts)[None, :]
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    return [int(c) for c in np.bincount(ids.ravel(), minlength=experts)]


def attention_shape(seq_lens, q_lens, *, block_size=16, dtype="bfloat16", kv_dtype=None, **heads) -> dict:
    """A paged attention shape (``paged_decode`` / ``paged_prefill``); ``q_lens`` 1 means one query per sequence."""
    return dict(num_seqs=len(seq_lens), q_len=q_lens, seq_len=seq_lens, block_size=block_size, dtype=dtype,
                kv_dtype=kv_dtype or dtype, **heads)


def gemm_shape(rows_tokens, experts, top_k, n, k, *, group_size=None, dtype="bfloat16", seed=0, **extra) -> dict:
    """A grouped GEMM shape: ``rows_tokens`` tokens routed top-k over ``experts`` (``expert_counts``)."""
    counts = expert_counts(rows_tokens, experts, top_k, seed)
    return dict(tokens=sum(counts), n=n, k=k, experts=experts, group_size=group_size, dtype=dtype,
                group_sizes=counts, active_experts=sum(1 for c in counts if c), routed_tokens=rows_tokens,
                top_k=top_k, **extra)


def moe_shape(tokens, *, experts, hidden, intermediate, top_k, weight_format, dtype="bfloat16", seed=0) -> dict:
    """A ``fused_moe`` shape with the catalogue's skewed routing (``expert_counts``)."""
    counts = expert_counts(tokens, experts, top_k, seed)
    return dict(tokens=tokens, hidden=hidden, intermediate=intermediate, experts=experts, top_k=top_k,
                weight_format=weight_format, dtype=dtype, group_size=128 if weight_format == "int4" else None,
                expert_counts=counts, active_experts=sum(1 for c in counts if c))


# norms and rotary embeddings (hidden sizes, eps and RoPE layouts from each model's config.json)
LLAMA3_8B_NORM = dict(hidden=4096, eps=1e-5)
DEEPSEEK_V3_NORMS = dict(hidden=7168, q_lora_rank=1536, kv_lora_rank=512, eps=1e-6)
GEMMA2_9B_NORM = dict(hidden=3584, eps=1e-6, weight_offset=1.0)  # Gemma stores its norm weight minus 1
LLAMA3_8B_ROPE = dict(num_q_heads=32, num_kv_heads=8, head_dim=128, rotary_dim=128, is_neox=True,
                      max_position=131072)
GPTJ_6B_ROPE = dict(num_q_heads=16, num_kv_heads=16, head_dim=256, rotary_dim=64, is_neox=False, max_position=2048)
NORM_TOKENS = (1, 64, 1024, 8192)  # the catalogue's T: one decode token to an 8k prefill


def small_tokens(tokens: int) -> int:
    """The interpreter-sized T a norm or RoPE case counts at: T itself up to 64, then 64 + T / 64 (a few programs
    of rows, so a per-program read shows) up to 192."""
    return tokens if tokens <= 64 else min(192, 64 + tokens // 64)


def mla_shape(seq_lens, q_lens, *, num_heads, rank, rope, scale, block_size=64, dtype="bfloat16", kv_dtype=None,
              **extra) -> dict:
    """An ``mla_decode`` shape; ``q_lens`` 1 means one query per sequence (no ``query_start_loc``)."""
    return dict(num_seqs=len(seq_lens), q_len=q_lens, seq_len=list(seq_lens), block_size=block_size, dtype=dtype,
                kv_dtype=kv_dtype or dtype, num_heads=num_heads, rank=rank, rope=rope, scale=scale, **extra)
