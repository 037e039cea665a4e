"""Modeled kernel times (every one a MODEL, never a measurement): ``t_roof``, ``t_counted`` and ``t_model``.

- ``t_roof = max(flops / peak, bytes_min / bandwidth)``: the op's floor on the GPU (``roofline.cost``).
- ``t_counted = bytes_counted / bandwidth``: the kernel's counted traffic (``roofline.counting``) at full
  bandwidth.
- ``t_model = sum over the op's launches l of max(t_counted * s_l * L_l, t_flop * s_l * Q_l)``, where
  ``t_flop = flops / peak``, ``s_l`` is launch l's share of the counted bytes (its FLOPs are taken in the same
  share: exact for one-kernel ops; fused_moe's two GEMMs have the same 2:1 split of FLOPs and weight bytes), and
  for a launch of P programs, R resident blocks per SM of w warps each, on S SMs, in W = ceil(P / (R S)) waves:

  - ``Q_l = ceil(P / S) * S / P``: wave quantization of the math (the last round of programs leaves SMs idle);
  - ``L_l = max(1, warps_needed / a)`` with ``a = min(R, P / (W S)) * w`` the warps resident per SM while it
    runs: too little occupancy to cover memory latency (Little's law: an SM keeps
    ``bandwidth / S * MEMORY_LATENCY_S`` bytes in flight, ``BYTES_IN_FLIGHT_PER_WARP`` per warp, so
    ``warps_needed = bandwidth / S * MEMORY_LATENCY_S / BYTES_IN_FLIGHT_PER_WARP``).

  Launch overhead, L2 hits and tail effects inside a wave are not modeled. The two constants are assumptions
  to calibrate: a GPU run stores ``measured / t_model`` per row in the JSON for that.
"""
from __future__ import annotations

MEMORY_LATENCY_S = 600e-9  # DRAM load latency under load (assumed; calibrate with measured / t_model)
BYTES_IN_FLIGHT_PER_WARP = 2048  # 4 outstanding 16-byte loads per lane (assumed)
FORMULA = ("t_model = sum_l max(t_counted * s_l * L_l, t_flop * s_l * Q_l); s_l = launch l's share of counted "
           "bytes; Q_l = ceil(P / S) * S / P; L_l = max(1, warps_needed / (min(R, P / (W * S)) * w)); "
           "warps_needed = bandwidth / S * {lat:.0f} ns / {bpw} B; P programs, R resident blocks/SM, w warps, "
           "S SMs, W = ceil(P / (R * S)) waves").format(lat=MEMORY_LATENCY_S * 1e9, bpw=BYTES_IN_FLIGHT_PER_WARP)


def warps_needed(spec) -> float:
    """Warps per SM whose loads in flight cover the memory latency at full bandwidth (Little's law)."""
    return spec.hbm_bytes_per_s / spec.sms * MEMORY_LATENCY_S / BYTES_IN_FLIGHT_PER_WARP


def latency_blocks(spec, warps_per_block: int, resident_blocks: int) -> float:
    """Blocks of ``warps_per_block`` warps per SM, on average, that cover ``warps_needed(spec)``: at most
    ``resident_blocks`` (what fits), at least 1. A split plan's programs per SM: H100 SXM 7.4 warps -> 1.86
    blocks of 4 (246 programs on 132 SMs), H200 10.7 -> 2.66 (352); a grid already that large is not split."""
    return max(1.0, min(float(resident_blocks), warps_needed(spec) / warps_per_block))


def launch_stretch(launch: dict, spec) -> tuple[float, float]:
    """(L, Q) of one compiled launch (see the module docstring)."""
    p, r, w, s = launch["programs"], launch["resident_blocks"], launch["num_warps"], spec.sms
    if p <= 0 or r <= 0:
        return float("inf"), float("inf")
    n_waves = -(-p // (r * s))
    active = min(r, p / (n_waves * s)) * w
    return max(1.0, warps_needed(spec) / active), -(-p // s) * s / p


def byte_shares(launches: list[dict], counted_launches: list | None) -> list[float]:
    """Each full-size launch's share of the counted bytes: the i-th launch of a kernel is paired with the i-th
    counted launch of that kernel (a launch with no counted partner gets 0); without per-launch counts, the
    whole share goes to the main (first matrix-instruction, else first) launch."""
    if counted_launches:
        by_kernel: dict[str, list[float]] = {}
        for name, b in counted_launches:
            by_kernel.setdefault(name, []).append(float(b))
        seen: dict[str, int] = {}
        raw = []
        for launch in launches:
            i = seen.get(launch["kernel"], 0)
            seen[launch["kernel"]] = i + 1
            got = by_kernel.get(launch["kernel"], [])
            raw.append(got[i] if i < len(got) else 0.0)
        total = sum(raw)
        if total > 0:
            return [b / total for b in raw]
    main = next((i for i, m in enumerate(launches) if m.get("mma", "none") != "none"), 0)
    return [1.0 if i == main else 0.0 for i in range(len(launches))]


def modeled_times(row: dict, compiled: dict | None, spec) -> dict:
    """``t_counted_us`` and ``t_model_us`` (None when a term is unknown, with ``t_model_note`` saying why)."""
    bw = spec.hbm_bytes_per_s
    out: dict = {"t_counted_us": row["bytes_counted"] / bw * 1e6 if row.get("bytes_counted") else None,
                 "t_model_us": None}
    t_flop = row["flops"] / spec.peak(row["compute_dtype"]) if row["flops"] else 0.0
    launches = (compiled or {}).get("launches") or []
    if out["t_counted_us"] is None:
        out["t_model_note"] = "no counted bytes"
        return out
    if not launches or any("error" in m for m in launches):
        out["t_model_note"] = "compile metrics missing" if not launches else "a launch did not compile"
        return out
    shares = byte_shares(launches, row.get("bytes_by_launch_full") or row.get("bytes_by_launch_medium")
                         or row.get("bytes_by_launch_small"))
    t_counted = out["t_counted_us"] * 1e-6
    total, terms = 0.0, []
    for launch, share in zip(launches, shares):
        lat, quant = launch_stretch(launch, spec)
        t = max(t_counted * share * lat, t_flop * share * quant)
        terms.append({"kernel": launch["kernel"], "share": share, "latency_stretch": lat, "wave_stretch": quant,
                      "t_us": t * 1e6})
        total += t
    out["t_model_us"] = total * 1e6
    out["t_model_terms"] = terms
    return out


def calibration(rows: list[dict]) -> dict:
    """The data a GPU run gives to calibrate the model: the constants, and per row t_model, its terms and the
    measured time (``measured_over_model`` = measured / t_model; empty without measurements)."""
    return {"formula": FORMULA, "memory_latency_s": MEMORY_LATENCY_S,
            "bytes_in_flight_per_warp": BYTES_IN_FLIGHT_PER_WARP,
            "rows": [{"case": r["case"], "t_model_us": r.get("t_model_us"), "t_measured_us": r["t_measured_us"],
                      "measured_over_model": r.get("measured_over_model"), "terms": r.get("t_model_terms")}
                     for r in rows if r.get("t_measured_us") and r.get("t_model_us")]}
