"""The goals the report evaluates: each op spec's (``kernels/ops/<op>.py``: ``SPEC.goals``), on the rows of this
project's kernels, for the chosen GPU."""
from __future__ import annotations

from kernels.ops import registry
from roofline.specs import GpuSpec


def _goals() -> tuple[dict, dict]:
    """Every op spec's goals (``kernels/ops/<op>.py``): ({goal: text}, {goal: limit})."""
    texts, limits = {}, {}
    for spec in registry().values():
        for goal, (limit, text) in spec.goals.items():
            texts[goal], limits[goal] = text, limit
    return texts, limits


GOALS, GOAL_LIMITS = _goals()

def goal_results(rows: list[dict], spec: GpuSpec, measured: bool) -> list[dict]:
    """Each goal on each case it applies to, evaluated for ``spec`` (``gpu``). The bandwidth goal applies on
    every GPU, and only to a measurement: a modeled report leaves it out (the markdown says so)."""
    out = []
    for goal, text in GOALS.items():
        for r in rows:
            if r.get("impl", "servekernels") != "servekernels":  # goals are this project's
                continue
            if goal not in r["goals"] or (goal == "decode_bw" and not measured):
                continue
            limit = GOAL_LIMITS[goal]
            if goal == "decode_bw":
                value = r["bytes_min"] / (r["t_measured_us"] * 1e-6) / spec.hbm_bytes_per_s \
                    if r["t_measured_us"] else None
                met = "not measured" if value is None else ("met" if value >= limit else "not met")
            elif goal == "prefill_fa2":
                value = r.get("fa2_ratio")
                met = "not counted" if value is None else ("met" if value <= limit else "not met")
            else:
                value = r.get("counted_ratio")
                met = "not counted" if value is None else ("met" if value <= limit else "not met")
            out.append({"goal": goal, "text": text, "gpu": spec.slug, "case": r["case"], "value": value,
                        "limit": limit, "result": met})
    return out
