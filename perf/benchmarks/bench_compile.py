"""Deterministic tracks: compile-time metrics of each tracked case's main kernel for an H100 (sm_90).

Each case's launches are planned by its launcher for an H100 SXM and compiled with Triton's bundled ptxas (no GPU
needed; ``roofline/compile_metrics.py``): a register or spill regression, or a drop in resident blocks, shows as
a step in asv's graph on the commit it lands.
"""
from __future__ import annotations

from ._common import TRACKED_CASES


class TrackCompileMetrics:
    params = list(TRACKED_CASES)
    param_names = ["case"]
    timeout = 900

    def setup_cache(self):
        from ._common import BACKEND  # deferred: asv imports to list; setup loads

        if BACKEND != "interpreter":
            return {"_skip": "the launch capture needs the Triton interpreter (set TRITON_INTERPRET=1 on a GPU box)"}
        from roofline.catalogue import catalogue  # deferred: asv imports to list; setup loads
        from roofline.compile_metrics import cases_compile_metrics  # deferred: asv imports to list; setup loads
        from roofline.specs import get_spec  # deferred: asv imports to list; setup loads

        return cases_compile_metrics([c for c in catalogue() if c.name in TRACKED_CASES], get_spec("h100-sxm"))

    def setup(self, compiled, case):
        if "_skip" in compiled:
            raise NotImplementedError(compiled["_skip"])
        main = (compiled.get(case) or {}).get("main")
        if not main or "error" in main:
            raise NotImplementedError(f"{case}: not compiled ({(main or {}).get('error', 'no launch')})")

    def track_registers(self, compiled, case):
        """Registers per thread of the case's main kernel."""
        return compiled[case]["main"]["regs"]

    track_registers.unit = "registers"

    def track_spill_bytes(self, compiled, case):
        """Spill stores + loads summed over every launch of the case."""
        return sum(m.get("spill_bytes", 0) for m in compiled[case]["launches"])

    track_spill_bytes.unit = "bytes"

    def track_resident_blocks(self, compiled, case):
        """Blocks of the main kernel resident per SM on an H100."""
        return compiled[case]["main"]["resident_blocks"]

    track_resident_blocks.unit = "blocks"

    def track_wave_efficiency(self, compiled, case):
        return compiled[case]["main"]["wave_efficiency"]

    track_wave_efficiency.unit = "ratio"
