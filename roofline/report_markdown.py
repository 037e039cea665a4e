"""The report's files: ``report.md`` (every section a reader sees, in order), ``report.csv``."""
from __future__ import annotations

import csv

from kernels.ops import get, registry
from roofline.goals import GOALS
from roofline.report_counting import FULL_SAMPLES, TORCH_COUNTED_BY
from roofline.report_sections import CSV_METRICS as COMPILE_CSV_METRICS
from roofline.report_sections import compile_section
from roofline.specs import DTYPES, GpuSpec


def _fmt(v, spec="{:.3g}"):
    return "—" if v is None else spec.format(v)


def _bytes(v):
    if v is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def _and(names: list[str]) -> str:
    """``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def _not_plotted(rows: list[dict]) -> str:
    """The sentence naming the ops of ``rows`` that do no FLOPs (the roofline has no point for them), or ""."""
    ops = list(dict.fromkeys(r["op"] for r in rows if not r.get("flops")))
    if not ops:
        return ""
    one = len(ops) == 1
    return f" {_and(ops)} {'does' if one else 'do'} no FLOPs and {'is' if one else 'are'} not plotted."


def write_markdown(path, doc: dict, goals: list[dict], unavailable: list[str]) -> None:
    spec, measured = doc["gpu"], doc["measured"]
    mode = "MEASURED on this GPU" if measured else "MODELED: no GPU here"
    lines = [f"# servekernels roofline report: {spec['name']} ({mode})", "",
             f"commit `{doc['commit']}`, {doc['created_utc']}, machine: {doc['machine']}, "
             f"{'quick catalogue' if doc['quick'] else 'full catalogue'}.", ""]
    cov = doc.get("trace_coverage")
    if cov:
        lines += [f"FlashInfer-Trace coverage (`servekernels trace coverage`): {cov['families_judged']} of "
                  f"{cov['families']} published flashinfer-bench definition families judged "
                  f"({100 * cov['families_judged'] / max(cov['families'], 1):.0f}%: {', '.join(cov['judged'])}), "
                  f"{cov['definitions_judged']} of {cov['definitions']} definitions "
                  f"({100 * cov['definitions_judged'] / max(cov['definitions'], 1):.0f}%); "
                  f"{cov['templates_judged']} of {cov['templates']} FlashInfer trace templates.", ""]
    sel = doc.get("selection")
    if sel and sel.get("k"):
        lines += [f"**A selection:** `-k {' -k '.join(sel['k'])}` (substring match) kept {len(sel['cases'])} of "
                  f"{sel['of']} {'quick ' if doc['quick'] else ''}cases: " + ", ".join(sel["cases"]) + ".", ""]
    specs = list(registry().values())
    full = [s for s in specs if s.full_size_count]
    capped = "; ".join(f"{s.name} {s.count_cap}" for s in full if s.count_cap)
    counting = ("Counted traffic: each Triton kernel runs under the Triton interpreter with counting hooks (bytes "
                "of the enabled lanes of every load and store, lanes of one access sharing an address counted "
                f"once). {_and([s.name for s in full])} are counted on stride-0 or zero-filled inputs with the full "
                "grid (batch, heads, N tiles, experts, rows as at full size) and per-program work capped "
                f"({capped}; {_and([s.name for s in full if not s.count_cap])} run at full length), "
                f"a stratified sample of {FULL_SAMPLES} programs of each larger launch run and weighted (an "
                "unbiased estimate; `programs (run)`), then scaled to full size by the ratio to the minimum "
                f"({_and([s.name for s in full if s.count_cap and s.capped_scaling == 'ratio'])}: conservative, "
                "overheads shrink with length) or along K "
                f"({_and([s.name for s in full if s.capped_scaling == 'k_by_launch'])}, per launch); "
                f"{_and([s.name for s in specs if not s.full_size_count])} are counted at the scaled-down parity "
                "shape, "
                "their counted/minimum ratio applied at full size. Parity: every kernel's output at the "
                "scaled-down shape (same heads, GQA ratio, head size, block size, dtypes, expert count; shorter "
                "contexts, fewer tokens, narrower GEMMs: `parity at`) against the float64 reference, with a "
                "derived tolerance. An implementation that is not Triton but eager torch (`torch`, a user's module "
                "with `SERVEKERNELS_TRITON = False`) is counted op by op under a torch dispatch mode at the "
                "scaled-down shape: each aten op one launch that reads its inputs and writes its outputs once "
                "(views move nothing; `counted_by` in report.json says which method counted a row).")
    if not doc.get("counted", True):
        counting = (f"Counting skipped (`--no-count`): no counted traffic; {doc['parity_note']}.")
    if not measured:
        lines += ["**Every time here is modeled** (`t_roof = max(flops / peak, bytes_min / bandwidth)`, dense "
                  "peaks); nothing was timed. " + counting, ""]
    else:
        lines += ["Times are measured with `perf.harness` (CUDA events around each call's launch sequence, setup "
                  "untimed; median with p20/p80, cold L2 by a >= 2x L2 flush before every call, "
                  f"{graphs_label(doc)} for every provider alike), outputs re-checked against the float64 "
                  "reference after timing. " + counting, ""]
    lines += ["## Ceilings", "", "| dtype | dense peak (TFLOP/s) | ridge point (FLOP/B) |", "| --- | ---: | ---: |"]
    gpu = get_spec_from_json(spec)
    for dt in DTYPES:
        if dt in spec["peak_flops"]:
            lines.append(f"| {dt} | {spec['peak_flops'][dt] / 1e12:.1f} | {gpu.ridge_point(dt):.0f} |")
    lines += ["", f"HBM {spec['hbm_bytes_per_s'] / 1e12:.2f} TB/s, {spec['sms']} SMs, L2 "
              f"{spec['l2_bytes'] / 2**20:.0f} MiB, shared memory {spec['smem_per_sm_bytes'] // 1024} KiB/SM. "
              f"Source: {spec['source']}.", ""]
    for msg in unavailable:
        lines.append(f"- **{msg}**")
    if unavailable:
        lines.append("")
    # without a GPU the only time is the op's floor (t_roof: the same for every implementation), never a row's own
    t_head = "t measured (us)" if measured else "op floor t_roof (us, modeled; not this impl's time)"
    lines += ["## Kernels", "",
              f"| op | case | impl | bound | GFLOP | min bytes | counted bytes | counted/min | {t_head} | % of roof | "
              "programs (run) | parity | max rel err | parity at |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in doc["rows"]:
        if r["status"] != "ok" and r.get("bytes_counted_small") is None and not r.get("t_measured_us"):
            lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {r['bound']} | {r['flops'] / 1e9:.3g} | "
                         f"{_bytes(r['bytes_min'])} | — | — | {'—' if measured else _fmt(r['t_roof_us'], '{:.2f}')} | — | — | "
                         f"{r['status']} | — | — |")
            continue
        t = r["t_measured_us"] if measured else r["t_roof_us"]
        at = r.get("counted_shape") or {}
        at_s = ", ".join(f"{k}={v['sum'] if isinstance(v, dict) else v}" for k, v in at.items()
                         if k in ("num_seqs", "seq_len", "q_len", "tokens", "n", "k", "num_tokens", "hidden"))
        if r.get("parity_at", "").startswith("full size"):
            at_s = "full size" + (f"; {at_s}" if at_s else "")
        med = r.get("programs_medium")
        progs = f"{med} ({r['programs_run_full']})" if med else f"{r.get('programs_small') or '—'} (scaled)"
        if r.get("counted_by") == TORCH_COUNTED_BY:  # an eager op's grid is not seen: its launches are
            progs = f"— ({r['launches_small']} aten ops)"
        counted = _bytes(r["bytes_counted"]) + ("" if med and not r.get("medium_shape") else
                                                " (scaled)") if r["bytes_counted"] else r.get("counting", "—")
        lines.append(
            f"| {r['op']} | {r['case']} | {r['impl']} | {r['bound']} | {r['flops'] / 1e9:.3g} | {_bytes(r['bytes_min'])} | "
            f"{counted} | {_fmt(r.get('counted_ratio'), '{:.3f}')} | {_fmt(t, '{:.2f}')} | "
            f"{_fmt(r['pct_of_roof'], '{:.0f}%') if measured else 'modeled'} | {progs} "
            f"| {r['parity']} | {_fmt(r['max_rel_err'], '{:.1e}')} | {at_s} |")
    lines += [""] + failures_section(doc) + timing_section(doc) + side_by_side_section(doc) + \
        compile_section(doc, get_spec_from_json)
    peers = [r for r in doc["rows"] if r.get("peers_us")]
    if peers:
        lines += ["", "Baselines (same timing policy and output check; us, or why not):", ""]
        for r in peers:
            paths = r.get("peers_timed_path") or {}
            lines.append(f"- {r['case']}: servekernels {_fmt(r['t_measured_us'], '{:.2f}')}; " + "; ".join(
                f"{n} {v:.2f} ({paths.get(n, '?')})" if isinstance(v, float) else f"{n}: {v}"
                for n, v in r["peers_us"].items()))
    lines += ["", "## Goals", "", f"Evaluated on {spec['name']} (`{spec['slug']}`): counted traffic at the launch plans "
              "for its SM count" + ("; bandwidth measured." if measured else "."), "",
              "| goal | GPU | case | value | limit | result |", "| --- | --- | --- | ---: | ---: | --- |"]
    for g in goals:
        lines.append(f"| {g['text']} | {g['gpu']} | {g['case']} | {_fmt(g['value'], '{:.3f}')} | {g['limit']} | "
                     f"{g['result']} |")
    bw_cases = [r["case"] for r in doc["rows"] if "decode_bw" in r["goals"]]
    if bw_cases and not measured:
        lines += ["", f"Not in the table: {GOALS['decode_bw']} ({spec['slug']}, "
                  f"{spec['hbm_bytes_per_s'] / 1e12:.2f} TB/s) needs a GPU measurement; not measured here "
                  f"({', '.join(bw_cases)})."]
    notes: dict[str, list[dict]] = {}  # a note's title (``OpSpec.programs_note``) -> its rows
    for r in doc["rows"]:
        title = get(r["op"]).programs_note(r["shape"]) if r.get("programs_full") else None
        if title:
            notes.setdefault(title, []).append(r)
    for title, listed in notes.items():
        lines += ["", f"{title} (programs at full size, from the grids the kernel "
                  f"launches; the GPU has {spec['sms']} SMs): "
                  + ", ".join(f"{r['case']}: {r['programs_full']} programs" for r in listed) + "."]
    lines += ["", "## Where the bytes go", "",
              "Counted bytes per kernel argument at the scaled-down parity shape (every program run), next to "
              "the op's minimum there: an argument read several times shows which re-read the schedule pays "
              "(e.g. activations once per N tile, a cache once per query head).", "",
              "| case | min bytes (scaled shape) | counted by argument |", "| --- | ---: | --- |"]
    for r in doc["rows"]:
        by = r.get("traffic_by_argument_small")
        if by:
            parts = ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
            lines.append(f"| {r['case']} [{r['impl']}] | {_bytes(r.get('bytes_min_small'))} | {parts} |")
    lines += ["", "## Roofline", "", "![roofline](roofline.png)", "",
              "One marker per op. Filled: FLOPs over minimum bytes at " + ("the measured time" if measured else
              "t_roof (on the roof, modeled)") + "; hollow: FLOPs over counted bytes at t_model (modeled, never "
              "above the roof); points numbered, the numbers listed beside the plot."
              + _not_plotted(doc["rows"]), "", "## Traffic", "", "![counted / minimum bytes](traffic.png)", "",
              "Counted / minimum bytes per case (counted under the interpreter), one bar per implementation "
              "counted.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def graphs_label(doc: dict) -> str:
    return "CUDA graphs: " + ("on" if doc.get("cuda_graphs") else "off")


def failures_section(doc: dict) -> list[str]:
    """Each failing row with the output that failed and its diagnosis (the detail's first line: ``op.output
    diagnosis: ...`` or ``op.output: ...``); nothing when every row passes."""
    failed = [r for r in doc["rows"] if r["parity"] == "FAIL"]
    if not failed:
        return []
    out = ["Parity failures (the output that failed, then where and why; report.json has the full detail):", ""]
    for r in failed:
        first = (r.get("parity_detail") or "no detail").splitlines()[0]
        out.append(f"- {r['case']} [{r['impl']}]: {first[:400]}")
    return out + [""]


def timing_section(doc: dict) -> list[str]:
    """What the device time brackets (the timed path per row) and, apart, the host overhead of one call."""
    measured = doc["measured"]
    policy = doc.get("timing_policy") or {}
    detail = (f", warmup {policy['warmup']}, {policy['reps']} timed calls, cold L2 "
              f"{'on' if policy['cold_l2'] else 'off'}") if policy else ""
    tail = "." if measured else " (the policy a GPU run with these options uses; nothing was timed here)."
    out = ["## Timing: device time and host overhead", "", f"Timing policy: {graphs_label(doc)}{detail}{tail}", ""]
    out += ["`device time`: CUDA events around the timed call (its launch sequence only; `timed path` says what "
            "that call is, its setup untimed). `host, validated call` / `host, timed-path call`: median host wall "
            "time of one call, a synchronize before each, the call's own device-to-host syncs included (a "
            "validated call copies its metadata to the host).", ""]
    if not measured:
        rows = doc["rows"]
        note = rows[0]["host_overhead"] if rows else "not measured (no GPU here)"
        out += [f"Device time and host overhead: {note}.", ""]
    out += ["| case | impl | timed path | device time (us) | host, validated call (us) | host, timed-path call (us) |",
            "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in doc["rows"]:
        if not measured:
            out.append(f"| {r['case']} | {r['impl']} | — | not measured | not measured | not measured |")
            continue
        host = ((_fmt(r.get("host_validated_us"), "{:.1f}"), _fmt(r.get("host_launch_us"), "{:.1f}"))
                if r.get("host_launch_us") is not None else (r.get("host_overhead") or "not measured", "—"))
        out.append(f"| {r['case']} | {r['impl']} | {r.get('timed_path') or '—'} | "
                   f"{_fmt(r.get('t_measured_us'), '{:.2f}')} | {host[0]} | {host[1]} |")
    return out + [""]


def side_by_side_section(doc: dict) -> list[str]:
    """Where several implementations ran: per case, ours / theirs for counted bytes, programs and kernel
    launches at the counted shape, and measured time on a GPU (below 1: ours moves fewer bytes, launches
    fewer programs, runs faster)."""
    impls = doc.get("impls") or []
    rows = [r for r in doc["rows"] if "ours_over_theirs" in r]
    if len(impls) < 2 or not rows:
        return []
    out = ["## Side by side", "", f"`{impls[0]}` over each other implementation on the same cases and inputs "
           "(counted under the interpreter at the counted shape, the same way for every implementation; measured "
           "on a GPU). Below 1: ours moves fewer bytes, launches fewer programs or runs faster. A Triton "
           "implementation's Triton launches are counted (torch ops it runs between them are not); an eager torch "
           "implementation's aten ops are (`counted_by`: each op a launch, its inputs read and outputs written "
           "once).", "",
           "| case | impl | parity | counted bytes ours/theirs | programs ours/theirs | launches ours/theirs | "
           "time ours/theirs |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        q = r["ours_over_theirs"]
        why = r.get("counting") or (r.get("parity_detail", "").replace("unsupported: ", "", 1)
                                    if r["parity"] == "unsupported" else None)
        why = "" if q and not why else f" ({why or r.get('status') or 'not counted'})"
        out.append(f"| {r['case']} | {r['impl']} | {r['parity']}{why} | {_fmt(q.get('bytes_counted_small'), '{:.3f}')} | "
                   f"{_fmt(q.get('programs_small'), '{:.3f}')} | {_fmt(q.get('launches_small'), '{:.2f}')} | "
                   f"{_fmt(q.get('t_measured_us'), '{:.2f}')} |")
    return out + [""]


def get_spec_from_json(d: dict) -> GpuSpec:
    return GpuSpec(**{k: (tuple(v) if k == "match" else v) for k, v in d.items()})


CSV_METRICS = ("flops", "bytes_min", "bytes_counted", "counted_ratio", "intensity", "t_roof_us", "t_measured_us",
               "host_validated_us", "host_launch_us", "pct_of_roof", "max_rel_err", "programs_full", "bytes_counted_small", "bytes_min_small",
               *COMPILE_CSV_METRICS)


def write_csv(path, doc: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["gpu", "measured", "commit", "op", "case", "dtype", "compute_dtype", "bound", "parity",
                    "metric", "value"])
        for r in doc["rows"]:
            for m in CSV_METRICS:
                if r.get(m) is not None:
                    w.writerow([doc["gpu"]["slug"], doc["measured"], doc["commit"], r["op"], r["case"], r["dtype"],
                                r["compute_dtype"], r["bound"], r["parity"], m, r[m]])
