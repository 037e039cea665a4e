"""The one table of tile sizes for the grouped GEMMs (dense, int4, fp8), chosen by shape in one place.

A grouped GEMM over E experts sees ``T / E`` rows per expert on average: a handful in decode (T = batch *
top_k), hundreds in prefill. Decode-sized groups waste most of a tall tile, so they get BLOCK_M = 16; prefill
gets BLOCK_M = 64. Int4 decode takes BLOCK_M = 32 (an expert of 17..32 rows reads its weights once) and
BLOCK_N = 256: each program re-reads its rows' activations, so a wide N tile keeps that re-read small next to
the weight stream (counted traffic within 1.1x of the minimum on the catalogue's decode cases); its short K step
keeps it at 128 registers, two resident blocks per SM on sm_90.
``batch_invariant=True`` takes one config per kind for every T (the prefill one: a tall tile wastes idle rows in
decode, which is memory-bound, but keeps prefill's weight reuse), so a row's K reduction order never depends on
how many rows share the call. There is no split-K in any config, so nothing else depends on T.
``select_config`` is the single entry point: a GPU autotuner can replace the table without touching a kernel.
The kernel-specific constraints (BLOCK_K dividing an int4 group or an fp8 scale block) are applied by the
launchers on top of what is chosen here.
"""
from __future__ import annotations

from dataclasses import dataclass

# The regime every call uses with batch_invariant=True.
INVARIANT_REGIME = "prefill"

# Average rows per expert at or below which a call counts as decode-sized.
DECODE_ROWS_PER_GROUP = 16


@dataclass(frozen=True)
class GemmConfig:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int

    def launch_kwargs(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K,
                "num_warps": self.num_warps, "num_stages": self.num_stages}


# (kind, regime) -> config. kind: "dense" (16/32-bit operands), "int4" (W4A16), "fp8" (W8A8).
CONFIGS = {
    ("dense", "decode"): GemmConfig(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    ("dense", "prefill"): GemmConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    # K step 32, 2 stages: 128 registers at 8 warps (sm_90, ptxas), 2 resident blocks/SM standalone (154 in
    # fused_moe, float32 out: still 1); K 64 with 4 stages took 240-242. M and N tiles kept: A and W are read
    # as often as before (N 128 would reach 119-126 registers everywhere but re-read A twice: counted/min
    # 1.064 -> 1.140 on Mixtral w2)
    ("int4", "decode"): GemmConfig(BLOCK_M=32, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=2),
    ("int4", "prefill"): GemmConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    # 32 rows: Qwen3-like E=128 top-8 at T=64 fits one tile per expert; N 128 halves the activation re-reads;
    # K step 64 (half a 128-wide scale block, scales still loaded once per block): 106 registers at 8 warps
    # (sm_90), 2 resident blocks/SM standalone and in fused_moe, where K 128 took 138-140 (1 block)
    ("fp8", "decode"): GemmConfig(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4),
    ("fp8", "prefill"): GemmConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=4, num_stages=3),
}


def regime(num_rows: int, num_groups: int) -> str:
    """"decode" when experts average at most DECODE_ROWS_PER_GROUP rows, else "prefill"."""
    return "decode" if num_rows <= DECODE_ROWS_PER_GROUP * max(num_groups, 1) else "prefill"


def select_config(kind: str, num_rows: int, num_groups: int, n: int, k: int, *,
                  batch_invariant: bool = False) -> GemmConfig:
    """Tile sizes for a grouped GEMM of ``num_rows`` rows over ``num_groups`` experts, weights ``[N, K]``;
    with ``batch_invariant`` the same config whatever ``num_rows`` and ``num_groups``."""
    return CONFIGS[(kind, INVARIANT_REGIME if batch_invariant else regime(num_rows, num_groups))]
