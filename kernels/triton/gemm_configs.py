"""The one table of tile sizes for the grouped GEMMs (dense, int4, fp8), chosen by shape in one place.

A grouped GEMM over E experts sees ``T / E`` rows per expert on average: a handful in decode (T = batch *
top_k), hundreds in prefill. Decode-sized groups waste most of a tall tile, so they get BLOCK_M = 16; prefill
gets BLOCK_M = 64. Int4 decode takes BLOCK_M = 32 (an expert of 17..32 rows reads its weights once) and
BLOCK_N = 256: each program re-reads its rows' activations, so a wide N tile keeps that re-read small next to
the weight stream (counted traffic within 1.1x of the minimum on the catalogue's decode cases); its short K step
keeps it at 128 registers, two resident blocks per SM on sm_90.
``batch_invariant=True`` takes one config per kind for every T (the prefill one: a tall tile wastes idle rows in
decode, which is memory-bound, but keeps prefill's weight reuse) and never splits K, so a row's K reduction order
never depends on how many rows share the call.

Split-K (``split_k``): a grid of P programs (row tiles counted by their shape bound, ``max_row_tiles``, so
``validate=False`` plans as ``validate=True`` does) under one wave of resident slots (``blocks_per_sm`` x SMs,
the blocks the config keeps resident per SM when compiled for sm_90) leaves SMs idle or under-occupied (too few
warps in flight to cover memory latency: Mixtral's ``w2`` at decode-sized T is 80 int4 programs on 132 SMs).
The int4 and fp8 launchers then cut K into ``S = min(slots // P, K // MIN_SPLIT_K, K units, MAX_SPLIT_K)``
balanced slices (a unit: one scale group or span, so no scale straddles two slices), each program writing its
float32 partial product to a ``[S, T, N]`` workspace, and a second kernel sums the S partials in order 0..S-1
(no atomics: bitwise the same run to run). ``S <= slots // P`` keeps the split grid within one wave. The extra
traffic is ``2 * S * T * N * 4`` bytes (the partials written and read), small next to the weights at
decode-sized T (Mixtral int4 w2: +1.3% of the counted bytes at S = 2). ``split_k=`` on a launcher forces S.
``select_config`` and ``split_k`` are the entry points: a GPU autotuner can replace the table (and the
``blocks_per_sm`` it measured) without touching a kernel.
The kernel-specific constraints (BLOCK_K dividing an int4 group or an fp8 scale block) are applied by the
launchers on top of what is chosen here.
"""
from __future__ import annotations

from dataclasses import dataclass

from kernels.validate import require

# The regime every call uses with batch_invariant=True.
INVARIANT_REGIME = "prefill"

# The most K slices a split-K plan cuts (each adds a float32 [T, N] partial written once and read once).
MAX_SPLIT_K = 4
# The shortest K slice a plan cuts: the slice's weights (BLOCK_N x 1024 x bytes per weight) stay many times the
# float32 partial its few decode rows add (and small test shapes, K <= 512, never split unless forced).
MIN_SPLIT_K = 1024

# Average rows per expert at or below which a call counts as decode-sized.
DECODE_ROWS_PER_GROUP = 16


@dataclass(frozen=True)
class GemmConfig:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    # resident blocks per SM of this config compiled for sm_90: the split-K plan's slots (int4 and fp8; 1, the
    # fewest, where not measured)
    blocks_per_sm: int = 1
    split_maxnreg: int | None = None  # ptxas register cap for the split-K kernel (float32 partial stores)

    def launch_kwargs(self) -> dict:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N, "BLOCK_K": self.BLOCK_K,
                "num_warps": self.num_warps, "num_stages": self.num_stages}

    def options(self, num_splits: int = 1) -> dict:
        """Compile options of a launch cutting K into ``num_splits`` slices (the register cap when split)."""
        out = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if num_splits > 1 and self.split_maxnreg:
            out["maxnreg"] = self.split_maxnreg
        return out


# (kind, regime) -> config. kind: "dense" (16/32-bit operands), "int4" and "mxfp4" (W4A16), "fp8" (W8A8).
CONFIGS = {
    ("dense", "decode"): GemmConfig(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    ("dense", "prefill"): GemmConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    # K step 32, 2 stages: 128 registers at 8 warps (sm_90, ptxas), 2 resident blocks/SM, standalone and in
    # fused_moe (float32 out: 148 until the kernel's store stopped reusing the loop's row/column tensors, see
    # grouped_gemm_int4); K 64 with 4 stages took 240-242. M and N tiles kept: A and W are read as often as before (N 128
    # would reach 119-126 registers everywhere but re-read A twice: counted/min 1.064 -> 1.140 on Mixtral w2).
    # The split-K kernel (float32 partials) takes 128 uncapped, 127 under maxnreg=128 (the cap kept as a guard:
    # 2 blocks/SM), so Mixtral w2 (80 programs, 128 by the shape bound) splits 2 ways
    ("int4", "decode"): GemmConfig(BLOCK_M=32, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=2, blocks_per_sm=2,
                                   split_maxnreg=128),
    ("int4", "prefill"): GemmConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    # MXFP4 (W4A16): a K step is one MX block of 32 (BLOCK_K fixed by the format), the int4 body. Decode takes
    # N 512 with 16 warps: each program re-reads its rows' activations, and at gpt-oss's decode sizes (a few rows
    # per expert, N = 5760) N 256 re-read them 23 times, counted/min 1.053 on gpt-oss-20b w13 (T = 16); N 512
    # gives 1.018 (120b w13 / w2: 1.00 / 1.02), 120 registers (sm_90, no spill), 1 resident block of 16 warps
    # (the warps in flight of 2 x 8). Prefill keeps the int4 tiles (217 registers, 2 blocks)
    ("mxfp4", "decode"): GemmConfig(BLOCK_M=32, BLOCK_N=512, BLOCK_K=32, num_warps=16, num_stages=2, blocks_per_sm=1,
                                    split_maxnreg=128),
    ("mxfp4", "prefill"): GemmConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    # 32 rows: Qwen3-like E=128 top-8 at T=64 fits one tile per expert; N 128 halves the activation re-reads;
    # K step 64 (half a 128-wide scale block, scales still loaded once per block): 106 registers at 8 warps
    # (sm_90), 2 resident blocks/SM standalone and in fused_moe, where K 128 took 138-140 (1 block). Mixtral w2
    # (160 programs) does not split: S = 2 would pass one wave of 264 slots, and t_model gains nothing from it
    ("fp8", "decode"): GemmConfig(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4, blocks_per_sm=2),
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



def check_split(split) -> None:
    """A launcher's ``split_k``: None or an int in ``[1, MAX_SPLIT_K]``, else a ValueError naming it."""
    require(split is None or (isinstance(split, int) and not isinstance(split, bool) and 1 <= split <= MAX_SPLIT_K),
            "split_k", f"must be None or an int in [1, {MAX_SPLIT_K}], got {split!r}")


def split_k(cfg: GemmConfig, programs: int, k: int, k_units: int, num_sms: int, *, split=None,
            batch_invariant: bool = False) -> int:
    """K slices for a grid of ``programs`` (row tiles x N tiles) over a K of ``k`` elements in ``k_units``
    indivisible units (scale groups). ``split``: the caller's forced count (an int in ``[1, MAX_SPLIT_K]``, at
    most ``k_units``; > 1 with ``batch_invariant`` is refused), else the plan: ``min(slots // programs,
    k // MIN_SPLIT_K, k_units, MAX_SPLIT_K)`` when the grid is under one wave of ``cfg.blocks_per_sm * num_sms``
    resident slots (at least two slices' worth), else 1; always 1 with ``batch_invariant``. ``programs`` counts the row
    tiles by their shape bound: the plan then reads no group offset, and both validate modes agree."""
    if split is not None:
        check_split(split)
        require(split <= max(int(k_units), 1), "split_k",
                f"{split} slices of a K of {k_units} scale unit(s): each slice needs one")
        require(split == 1 or not batch_invariant, "split_k", "batch_invariant=True never splits K")
        return split
    slots = cfg.blocks_per_sm * int(num_sms)
    if batch_invariant or programs <= 0 or programs * 2 > slots:
        return 1
    return max(1, min(slots // programs, int(k) // MIN_SPLIT_K, int(k_units), MAX_SPLIT_K))
