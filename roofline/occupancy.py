"""Resident blocks per SM and waves, from a compiled kernel's registers, shared memory and warps and a GPU's limits.

The occupancy calculator's arithmetic (CUDA C++ Programming Guide, occupancy section):

- registers: ``ceil(regs_per_thread * 32 / 256) * 256`` per warp (allocation unit 256); the SM holds
  ``floor(regs_per_sm / that)`` warps, i.e. ``floor(warps_by_registers / warps_per_block)`` blocks;
- shared memory: ``floor(smem_per_sm / (smem_per_block + 1 KiB reserved))`` blocks (a block asking for more than
  ``smem_per_block_bytes`` cannot launch: 0);
- threads: ``floor(max_warps_per_sm / warps_per_block)`` blocks; and at most ``max_blocks_per_sm``.

Resident blocks = the smallest of the four. A grid of P programs on S SMs with R resident blocks each takes
``waves = ceil(P / (R * S))``; ``wave_efficiency = P / (waves * R * S)`` is the fraction of resident slots the
grid keeps busy over its waves (1.0: every wave full).
"""
from __future__ import annotations

from roofline.specs import REG_ALLOC_UNIT, RESERVED_SMEM_PER_BLOCK, GpuSpec


def resident_blocks(spec: GpuSpec, regs_per_thread: int, smem_bytes: int, num_warps: int) -> tuple[int, str]:
    """(blocks of this kernel resident per SM, the limit that decides it: "registers", "shared memory",
    "threads" or "blocks")."""
    if num_warps < 1:
        raise ValueError(f"num_warps: must be >= 1, got {num_warps}")
    per_warp = -(-max(int(regs_per_thread), 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by = {"registers": (spec.regs_per_sm // per_warp) // num_warps,
          "threads": min(spec.max_warps_per_sm, spec.max_threads_per_sm // 32) // num_warps,
          "blocks": spec.max_blocks_per_sm}
    by["shared memory"] = 0 if smem_bytes > spec.smem_per_block_bytes else \
        spec.smem_per_sm_bytes // (int(smem_bytes) + RESERVED_SMEM_PER_BLOCK)
    limit = min(by, key=lambda k: (by[k], k != "registers"))
    return int(by[limit]), limit


def waves(programs: int, blocks_per_sm: int, sms: int) -> tuple[int, float]:
    """(waves, wave efficiency) of a grid of ``programs`` with ``blocks_per_sm`` resident on ``sms`` SMs."""
    slots = blocks_per_sm * sms
    if programs <= 0 or slots <= 0:
        return 0, 0.0
    w = -(-programs // slots)
    return w, programs / (w * slots)
