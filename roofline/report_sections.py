"""Markdown sections of the report for the compile-time metrics and the modeled times (``report.md``)."""
from __future__ import annotations

from roofline.timing_model import FORMULA, warps_needed

# report row keys -> CSV metric names added by the compile metrics and the timing model
CSV_METRICS = ("regs", "spill_bytes", "spill_bytes_all", "smem_bytes", "num_warps", "resident_blocks", "programs",
               "waves", "wave_efficiency", "mma", "t_counted_us", "t_model_us", "measured_over_model")


def _f(v, fmt="{:.3g}"):
    return "—" if v is None else fmt.format(v)


def _launch_cells(m: dict) -> str:
    if "error" in m:
        return f"{m['kernel']} | — | — | — | — | — | {m['programs']} | — | — | compile error: {m['error'][:80]}"
    return (f"{m['kernel']} | {m['regs']} | {m['spill_bytes']} | {m['smem_bytes'] // 1024} | {m['num_warps']} | "
            f"{m['resident_blocks']} ({m['resident_limit']}) | {m['programs']} | {m['waves']} | "
            f"{m['wave_efficiency']:.2f} | {m['mma']}")


def compile_section(doc: dict, get_spec_from_json) -> list[str]:
    """'Compile-time metrics and modeled times': one row per case (its main kernel), then every launch."""
    spec = get_spec_from_json(doc["gpu"])
    rows = [r for r in doc["rows"] if r.get("compile")]
    if not rows:
        return ["## Compile-time metrics and modeled times", "",
                "Not computed (needs the Triton interpreter for the launch capture; skipped with --no-count "
                "on a GPU box).", ""]
    arch = rows[0]["compile"]["arch"]
    measured = doc["measured"]
    lines = ["## Compile-time metrics and modeled times", "",
             f"Every kernel launch each case makes at full size, as its launcher plans it for {spec.name} "
             f"({spec.sms} SMs), compiled for {arch} with Triton's bundled ptxas (no GPU needed; "
             "`roofline/compile_metrics.py`): registers per thread, spill bytes (stores + loads), shared "
             "memory, warps, resident blocks per SM and what limits them (register file "
             f"{spec.regs_per_sm}, {spec.smem_per_sm_bytes // 1024} KiB shared memory per SM, "
             f"{spec.max_warps_per_sm} warps, {spec.max_blocks_per_sm} blocks; `roofline/occupancy.py`), "
             "programs, waves, wave efficiency = programs / (waves x resident blocks x SMs), and the matrix "
             "instructions in the PTX. The case row shows its main kernel (the launch with matrix "
             "instructions and the most warps in flight).", "",
             "**Modeled times (models, not measurements):** `t_roof = max(flops / peak, bytes_min / bandwidth)`; "
             "`t_counted = counted bytes / bandwidth`; `" + FORMULA + f"` (here warps_needed = "
             f"{warps_needed(spec):.1f}; `roofline/timing_model.py`)."
             + (" `measured / t_model` is kept per row in report.json (`calibration`)." if measured else ""), "",
             "| op | case | main kernel | regs | spills (B) | smem (KiB) | warps | resident/SM | programs | waves | "
             "wave eff | mma | t_roof (us) | t_counted (us) | t_model (us) |"
             + (" measured / t_model |" if measured else ""),
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
             + (" ---: |" if measured else "")]
    for r in rows:
        main = r["compile"].get("main")
        cells = _launch_cells(main) if main else "— | — | — | — | — | — | — | — | — | —"
        if r["compile"].get("error"):
            cells = f"launch capture failed: {r['compile']['error'][:80]} | — | — | — | — | — | — | — | — | —"
        lines.append(f"| {r['op']} | {r['case']} | {cells} | {_f(r['t_roof_us'], '{:.2f}')} | "
                     f"{_f(r.get('t_counted_us'), '{:.2f}')} | "
                     f"{_f(r.get('t_model_us'), '{:.2f}') if r.get('t_model_us') else r.get('t_model_note', '—')}"
                     " |" + (f" {_f(r.get('measured_over_model'), '{:.2f}')} |" if measured else ""))
    multi = [r for r in rows if len(r["compile"]["launches"]) > 1]
    if multi:
        lines += ["", "Every launch of the cases with several (in launch order):", "",
                  "| case | kernel | regs | spills (B) | smem (KiB) | warps | resident/SM | programs | waves | "
                  "wave eff | mma |", "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for r in multi:
            for m in r["compile"]["launches"]:
                lines.append(f"| {r['case']} | {_launch_cells(m)} |")
    return lines + [""]
