"""The report's figures: ``roofline.png`` (log-log roofline) and ``traffic.png`` (counted / minimum bytes).

Roofline: a roof per distinct peak (dtypes sharing one are named together); one marker shape and colour per op (its spec's ``style``)
(legend); per case a filled point at FLOPs / minimum bytes and its time (measured on a GPU, else ``t_roof``,
on the roof) and a hollow point at FLOPs / counted bytes and ``t_model`` (modeled; ``t_model`` >= counted
bytes / bandwidth and >= FLOPs / peak, so it never sits above the roof), joined by a thin line. Points are
numbered and the numbers listed beside the plot, so no label overlaps another. Traffic: counted / minimum
bytes per case, one bar per implementation the report counted (side by side), the 1.0 line marked.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.ops import registry


def _style(op: str) -> tuple[str, str]:
    """The op spec's (marker, colour); black circles for an op the registry does not know (an old report)."""
    spec = registry().get(op)
    return spec.style if spec else ("o", "k")


def _pyplot():
    import matplotlib  # deferred: matplotlib is the optional 'report' extra; only the figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as above

    return plt


def _title(doc: dict, spec, what: str) -> str:
    kind = "measured" if doc["measured"] else "modeled, no GPU"
    return f"{spec.name}: {what} ({kind}), commit {doc['commit'][:10]}"


def _crowd(placed: list, x: float, y: float) -> int:
    """How many numbers already sit near (x, y) on the log-log axes (the next one is stacked below them)."""
    lx, ly = math.log10(x), math.log10(y)
    n = sum(1 for px, py in placed if abs(px - lx) < 0.15 and abs(py - ly) < 0.08)
    placed.append((lx, ly))
    return n


def roofline(path, doc: dict, spec) -> None:
    plt = _pyplot()
    fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 7), gridspec_kw={"width_ratios": [3, 1.3]})
    x = np.logspace(-1, 4, 200)
    roofs: dict[float, list[str]] = {}
    for dt, peak in spec.peak_flops.items():
        roofs.setdefault(peak, []).append(dt)
    for peak, names in sorted(roofs.items()):
        ax.plot(x, np.minimum(peak, x * spec.hbm_bytes_per_s), lw=1.0, color="0.6", ls="--")
        ax.annotate(f"{'/'.join(names)} {peak / 1e12:.0f} TFLOP/s", (x[-1], peak), fontsize=7, ha="right",
                    va="bottom", color="0.4")
    listed, seen_ops, placed = [], set(), []
    for r in primary_rows(doc):
        if not r["flops"] or not r["bytes_min"]:
            continue
        n = len(listed) + 1
        marker, color = _style(r["op"])
        t = r["t_measured_us"] if doc["measured"] and r.get("t_measured_us") else r["t_roof_us"]
        y = r["flops"] / (t * 1e-6)
        label = r["op"] if r["op"] not in seen_ops else None
        seen_ops.add(r["op"])
        ax.scatter([r["intensity"]], [y], marker=marker, color=color, s=55, zorder=3, label=label)
        crowd = _crowd(placed, r["intensity"], y)
        # a number stacked below its crowded neighbours' gets a leader line back to its point
        ax.annotate(str(n), (r["intensity"], y), fontsize=7, xytext=(6 + 8 * (crowd > 0), 3 - 9 * crowd),
                    textcoords="offset points",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.55", shrinkA=0, shrinkB=2) if crowd else None)
        note = ""
        if r.get("bytes_counted") and r.get("t_model_us"):
            xc, yc = r["flops"] / r["bytes_counted"], r["flops"] / (r["t_model_us"] * 1e-6)
            ax.scatter([xc], [yc], marker=marker, s=55, facecolors="none", edgecolors=color, zorder=3)
            ax.plot([r["intensity"], xc], [y, yc], color=color, lw=0.6, alpha=0.6)
            note = (f": t_roof {r['t_roof_us']:.3g} -> t_model {r['t_model_us']:.3g} us "
                    f"({r['t_model_us'] / r['t_roof_us']:.2f}x)")
        listed.append(f"{n}. {r['case']}{note}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(_title(doc, spec, "roofline"), fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.lines import Line2D  # deferred: as _pyplot's

    handles += [Line2D([], [], marker="o", color="k", ls="", label="filled: minimum bytes, "
                       + ("measured time" if doc["measured"] else "t_roof (on the roof)")),
                Line2D([], [], marker="o", color="k", ls="", markerfacecolor="none",
                       label="hollow: counted bytes, t_model (modeled)")]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    side.axis("off")
    no_flops = sorted({r["op"] for r in primary_rows(doc) if not r["flops"]})
    unplotted = (f"\n\n{', '.join(no_flops)} {'does' if len(no_flops) == 1 else 'do'} no FLOPs: not plotted"
                 if no_flops else "")
    side.text(0, 1, "\n".join(listed) + unplotted, fontsize=7, va="top",
              family="monospace", transform=side.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def primary_rows(doc: dict) -> list[dict]:
    """The rows of the report's first implementation (the others appear as its bars and ratio columns)."""
    first = (doc.get("impls") or ["servekernels"])[0]
    return [r for r in doc["rows"] if r.get("impl", "servekernels") == first]


def counted_ratios(row: dict) -> dict[str, float]:
    """{implementation: counted / minimum bytes} of a row (``counted_ratio_by_impl`` where the report counted
    several implementations, else servekernels alone)."""
    by = dict(row.get("counted_ratio_by_impl") or {})
    if not by and row.get("counted_ratio"):
        by[row.get("impl", "servekernels")] = row["counted_ratio"]
    return by


def traffic(path, doc: dict, spec) -> None:
    plt = _pyplot()
    rows = [r for r in primary_rows(doc) if counted_ratios(r)]
    impls = sorted({i for r in rows for i in counted_ratios(r)}, key=lambda i: (i != "servekernels", i))
    fig, ax = plt.subplots(figsize=(12, 0.9 + 0.28 * max(len(rows), 1) * max(len(impls), 1) ** 0.5))
    if not rows:
        ax.text(0.5, 0.5, "no counted traffic in this report", ha="center", va="center")
        ax.axis("off")
    else:
        ypos = np.arange(len(rows))
        h = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            vals = [counted_ratios(r).get(impl, np.nan) for r in rows]
            colors = [_style(r["op"])[1] for r in rows] if len(impls) == 1 else None
            ax.barh(ypos + (j - (len(impls) - 1) / 2) * h, vals, height=h, label=impl, color=colors,
                    alpha=0.85 if j == 0 else 0.55)
            for yy, v in zip(ypos + (j - (len(impls) - 1) / 2) * h, vals):
                if np.isfinite(v):
                    ax.annotate(f"{v:.2f}", (v, yy), xytext=(3, 0), textcoords="offset points", va="center",
                                fontsize=7)
        ax.set_yticks(ypos, [r["case"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel("counted / minimum bytes (1.0 = the op's minimum traffic)")
        if len(impls) > 1:
            ax.legend(fontsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(_title(doc, spec, "counted traffic over the minimum (counted under the interpreter)"),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
