"""``servekernels report``: how close each kernel is to what the GPU allows, over real model shapes.

For every case of the catalogue (``roofline/catalogue.py``) it writes, under ``--out`` (default
``reports/<gpu-slug>/``):

- ``report.md``: the GPU's ceilings, one row per kernel case, the goals next to what was measured, the plot;
- ``report.json``: ``{"gpu": spec, "measured": bool, "commit": ..., "rows": [...]}``;
- ``report.csv``: long format, one row per (op, case, metric), so runs on different GPUs concatenate;
- ``roofline.png``, ``traffic.png``: the roofline and counted / minimum bytes per case (``roofline/plots.py``).

Without a GPU the times are MODELED for ``--gpu`` (default h100-sxm): ``t_roof_us = max(flops / peak,
bytes_min / bandwidth)``, and every kernel's real traffic is COUNTED under the Triton interpreter at a
scaled-down shape (same heads, GQA ratio, head size, block size, dtypes, expert count), where its output is also
checked against the float64 reference (``parity``). With a GPU the kernel is timed at full size by
``perf.harness`` (cold L2, median of per-call CUDA events) and its output re-checked after timing; counting
still runs under the interpreter, in a subprocess.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

from roofline.attribution import by_argument, by_launch
from roofline.catalogue import Case, case_cost, catalogue, fa2_bytes, json_shape
from roofline.lazy_inputs import lazy_inputs as _lazy_inputs
from roofline.report_sections import CSV_METRICS as COMPILE_CSV_METRICS
from roofline.report_sections import compile_section
from roofline.specs import DEFAULT_SLUG, DTYPES, GpuSpec, detect_spec, get_spec

GOALS = {
    "decode_traffic": "paged_decode counted traffic within 1.1x of minimum bytes (GQA 32/8 x 128)",
    "gemm_traffic": "grouped GEMMs counted traffic within 1.2x of minimum bytes at decode-sized T",
    "prefill_fa2": "paged_prefill counted traffic at or below the FlashAttention-2 model (K/V re-read once per "
                   "128-query tile per query head)",
    "decode_bw": "paged_decode at >= 90% of the GPU's HBM bandwidth for batch x context >= 16k tokens",
}
GOAL_LIMITS = {"decode_traffic": 1.1, "gemm_traffic": 1.2, "prefill_fa2": 1.0, "decode_bw": 0.9}
COMPUTE_KEY = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float8_e4m3fn": "fp8", "fp32": "fp32"}


def add_arguments(p) -> None:
    p.add_argument("--gpu", default=None, help=f"GPU to model when there is none here (default {DEFAULT_SLUG}); "
                   "on a GPU, the detected one. Slugs: h100-sxm, h100-pcie, h200, a100-80gb, l4, a10, rtx-4090")
    p.add_argument("--gpu-spec-file", default=None, help="JSON/TOML file with extra GPU specs (roofline/specs.py)")
    p.add_argument("--out", default=None, help="output directory (default reports/<gpu-slug>/)")
    p.add_argument("--quick", action="store_true", help="a few cases per op, short timing (a few minutes here)")
    p.add_argument("-k", dest="select", action="append", metavar="NAME",
                   help="only cases whose name contains NAME (a substring; repeatable: any of them)")
    p.add_argument("--exact", action="store_true", help="-k NAME selects only the case named exactly NAME")
    p.add_argument("--no-count", action="store_true", help="skip interpreter counting and the scaled-down parity "
                   "check (a GPU run still checks parity at full size)")
    p.add_argument("--invariance", action="store_true", help="also write invariance.md: the cost of "
                   "batch_invariant=True per case and which invariance properties hold (roofline/invariance.py)")
    p.add_argument("--count-worker", default=None, help=argparse_hidden())
    p.add_argument("--count-cases", default=None, help=argparse_hidden())


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


# -------------------------------------------------------------------------------------------------- progress

class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done, self.t0 = total, label, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{time.perf_counter() - self.t0:6.1f}s {what}")
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:160])
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# ------------------------------------------------------------------------------------------------ counting

def count_case(case: Case, num_sms: int | None = None) -> dict:
    """Counted traffic, programs and parity of one case at its small shape, under the interpreter.
    ``num_sms``: the modeled GPU's SM count, for launch plans that depend on it (decode splits). Counting that
    fails (a Triton it cannot patch, a hook error) sets ``counting`` to "not counted: <reason>" and leaves the
    parity check, which then runs the kernel uncounted, to decide ``parity``."""
    from roofline import ops

    out: dict = {"counted_shape": json_shape(case.op, case.small)}
    t0 = time.perf_counter()
    prep = ops.prepare(case.op, case.small, "cpu", seed=0)
    plan = _plan_kwargs(case, num_sms)

    def run():
        return ops.kernel(case.op)(*prep.args, **prep.kwargs, **plan) if plan else prep.run()

    result, counter, why = _run_counted(run)
    out["count_seconds"] = round(time.perf_counter() - t0, 2)
    if why:
        out["counting"] = f"not counted: {why}"
    else:
        small_cost = case_cost(case.op, case.small)
        out.update(bytes_counted_small=counter.total_bytes, bytes_min_small=small_cost.bytes_min,
                   programs_small=counter.programs, launches_small=len(counter.launches),
                   kernels=counter.kernels(), traffic_by_argument_small=by_argument(counter),
                   bytes_by_launch_small=by_launch(counter))
        if case.op == "paged_prefill":
            out["fa2_bytes_small"] = fa2_bytes(case.small)
    ok, rel, detail = prep.check(result, prep.expected())
    out.update(parity="pass" if ok else "FAIL", max_rel_err=rel, parity_detail=detail[:2000])
    if case.op in FULL_SIZE_OPS and not why:
        try:
            out.update(count_full(case, num_sms=num_sms))
        except Exception as exc:  # counting is not parity: a failure here only loses the full-size count
            out["counting"] = f"not counted at full size: {type(exc).__name__}: {str(exc)[:300]}"
    return out


def _run_counted(run, **count_kwargs):
    """``(result, counter, None)`` from ``run()`` under ``count_traffic``, or ``(result, None, reason)`` when
    counting fails: the kernel then runs again uncounted, so only an error of the kernel itself propagates."""
    from roofline.counting import CountingUnavailable, count_traffic

    try:
        with count_traffic(**count_kwargs) as counter:
            result = run()
    except CountingUnavailable as exc:
        return run(), None, str(exc)
    except Exception as exc:
        why = f"{type(exc).__name__} while counting: {str(exc)[:300]}"
        return run(), None, why  # raises again if the kernel itself is broken
    return result, (None if counter.failure else counter), counter.failure


def _plan_kwargs(case: Case, num_sms: int | None) -> dict:
    """Launcher keywords that make the launch plan the modeled GPU's (paged_decode's split heuristic)."""
    return {"num_sms": num_sms} if num_sms and case.op == "paged_decode" else {}



# ops counted again at (nearly) full size on stride-0 inputs, running a stratified sample of each launch's programs
FULL_SIZE_OPS = ("paged_decode", "paged_prefill", "grouped_gemm", "grouped_gemm_int4", "grouped_gemm_fp8")
FULL_SAMPLES = 16
DECODE_CTX_CAP = 2048  # longest context executed per sampled program (the batch, hence the split plan, is kept)
PREFILL_LEN_CAP = 384  # prefill: q_len and seq_len scaled together so the longest sequence fits
GEMM_K_CAP = 512  # GEMM: K only scales every operand's traffic alike (N, rows and experts kept)


def medium_shape(case: Case) -> tuple[dict, bool]:
    """The case's shape with per-program work capped (see the caps above); (shape, capped?)."""
    s = dict(case.shape)
    if case.op == "paged_decode" and max(s["seq_len"]) > DECODE_CTX_CAP:
        f = DECODE_CTX_CAP / max(s["seq_len"])
        s["seq_len"] = [max(1, int(n * f)) for n in s["seq_len"]]
        return s, True
    if case.op == "paged_prefill" and max(s["seq_len"]) > PREFILL_LEN_CAP:
        f = PREFILL_LEN_CAP / max(s["seq_len"])
        sl = [max(1, int(round(n * f))) for n in s["seq_len"]]
        s["q_len"] = [min(max(1, int(round(q * f))), n) for q, n in zip(s["q_len"], sl)]
        s["seq_len"] = sl
        return s, True
    if case.op.startswith("grouped_gemm") and s["k"] > GEMM_K_CAP:
        s["k"] = GEMM_K_CAP
        return s, True
    return s, False


def full_programs(case: Case, num_sms: int | None = None) -> int:
    """Programs the kernel launches at the real full shape (grids only: nothing executes)."""
    from roofline import ops
    from roofline.counting import launches_only

    args, kwargs = _lazy_inputs(case)
    with launches_only() as counter:
        ops.kernel(case.op)(*args, **kwargs, **_plan_kwargs(case, num_sms))
    return counter.programs


def count_full(case: Case, samples: int = FULL_SAMPLES, num_sms: int | None = None) -> dict:
    """Traffic at the case's full shape, per-program work capped (``medium_shape``): every grid is the real one
    (batch, heads, N tiles, experts and rows as at full size); launches with more than ``samples`` programs run
    a stratified sample (``count_traffic(max_programs=...)``, an unbiased estimate). Capped lengths are scaled
    back: decode and GEMMs by the counted/minimum ratio (per-program overheads only shrink with length, so this
    is conservative), prefill by the ratio to the FlashAttention-2 model (both re-read K/V per query tile, so
    the ratio carries over)."""
    from roofline import ops
    from roofline.counting import CountingUnavailable, count_traffic

    import torch

    shape, capped = medium_shape(case)
    fn = ops.kernel(case.op)
    t0 = time.perf_counter()
    # every fresh allocation (our inputs, the launcher's workspaces) is zero-filled while counting: what a
    # kernel reads from memory no sampled program wrote is then the same on every run (deterministic counts for
    # asv), and reads as a valid value (a split-KV partial with LSE 0, not an empty one), as in a full run
    empty, empty_like = torch.empty, torch.empty_like
    torch.empty, torch.empty_like = torch.zeros, torch.zeros_like
    try:
        args, kwargs = _lazy_inputs(Case(case.op, case.name, shape, case.small), stride0=False)
        with count_traffic(max_programs=samples, seed=0) as counter:
            fn(*args, **kwargs, **_plan_kwargs(case, num_sms))
    finally:
        torch.empty, torch.empty_like = empty, empty_like
    if counter.failure:
        raise CountingUnavailable(counter.failure)
    counted = counter.total_bytes
    if capped and case.op == "paged_prefill":
        full = counted / fa2_bytes(shape) * fa2_bytes(case.shape)
    elif capped:
        full = counted / case_cost(case.op, shape).bytes_min * case_cost(case.op, case.shape).bytes_min
    else:
        full = counted
    return {"bytes_counted_full": full, "bytes_counted_medium": counted, "programs_medium": counter.programs,
            "programs_run_full": sum(launch.executed for launch in counter.launches),
            "programs_full": counter.programs if not capped else full_programs(case, num_sms),
            "bytes_by_launch_medium": by_launch(counter),
            "medium_shape": json_shape(case.op, shape) if capped else None,
            "count_full_seconds": round(time.perf_counter() - t0, 2)}


def count_cases(cases: list[Case], progress: Progress | None = None, spec: GpuSpec | None = None) -> dict[str, dict]:
    """``{case name: counted fields}`` for every case whose kernel is in this build (interpreter only); with
    ``spec``, launch plans are that GPU's and each case also gets its compile metrics (``"compile"``)."""
    from roofline import ops
    from roofline.counting import interpreter_problem

    results: dict[str, dict] = {}
    broken = interpreter_problem()  # neither counting nor the scaled-down parity check can run here
    for case in cases:
        why = ops.available(case.op)
        if why:
            results[case.name] = {"status": why}
        elif broken:
            results[case.name] = {"counting": f"not counted: {broken}"}
        else:
            try:
                results[case.name] = count_case(case, spec.sms if spec else None)
            except ops.Unavailable as exc:
                results[case.name] = {"status": str(exc)}
            except ModuleNotFoundError as exc:  # a kernel module the op needs has not landed
                if not (exc.name or "").startswith("kernels."):
                    raise
                results[case.name] = {"status": f"{case.op}: not available in this build (needs {exc.name})"}
            except Exception as exc:  # a kernel that crashes is a finding: record it, keep going
                results[case.name] = {"status": f"error: {type(exc).__name__}: {str(exc)[:500]}",
                                      "parity": "FAIL"}
        if progress:
            progress.step(f"counted {case.name}")
    if spec is not None:
        for name, compiled in compile_cases(cases, spec).items():
            results.setdefault(name, {})["compile"] = compiled
    return results


def compile_cases(cases: list[Case], spec: GpuSpec) -> dict[str, dict]:
    """Compile metrics (``roofline.compile_metrics``) of every case whose kernel is in this build."""
    from roofline import ops
    from roofline.compile_metrics import cases_compile_metrics

    return cases_compile_metrics([c for c in cases if not ops.available(c.op)], spec)


def _count_in_subprocess(cases: list[Case], progress: Progress, spec: GpuSpec) -> dict[str, dict]:
    """On a GPU box: run the counting under the interpreter in a child process (the parent runs CUDA)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path, cases_path = os.path.join(tmp, "counted.json"), os.path.join(tmp, "cases.json")
        with open(cases_path, "w") as f:  # the cases themselves, not names: any catalogue (a test's too) counts
            json.dump([asdict(c) for c in cases], f)
        cmd = [sys.executable, "-m", "servekernels", "report", "--count-worker", path, "--count-cases", cases_path,
               "--gpu", spec.slug]
        env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        for c in cases:
            progress.step(f"counted {c.name}")
        if proc.returncode != 0 or not os.path.exists(path):
            return {c.name: {"counting": f"not counted: the counting subprocess failed (exit {proc.returncode})"}
                    for c in cases}
        with open(path) as f:
            return json.load(f)


# -------------------------------------------------------------------------------------------------- rows

def model_row(case: Case, spec: GpuSpec) -> dict:
    c = case_cost(case.op, case.shape)
    roof = c.roof(spec)
    s = case.shape
    return {
        "op": case.op, "case": case.name, "shape": json_shape(case.op, s),
        "dtype": s.get("dtype"), "kv_dtype": s.get("kv_dtype"), "weight_format": s.get("weight_format"),
        "compute_dtype": c.compute_dtype,
        "flops": c.flops, "bytes_min": c.bytes_min, "bytes_min_breakdown": c.breakdown,
        "intensity": c.flops / c.bytes_min if c.bytes_min else None,
        "bound": roof["bound"], "t_roof_us": roof["t_roof_s"] * 1e6,
        "t_compute_us": roof["t_compute_s"] * 1e6, "t_memory_us": roof["t_memory_s"] * 1e6,
        "bytes_counted": None, "counted_ratio": None, "t_measured_us": None, "pct_of_roof": None,
        "parity": "not checked", "max_rel_err": None, "status": "ok", "goals": case.goal.split(",") if case.goal
        else [], "fa2_bytes": fa2_bytes(s) if case.op == "paged_prefill" else None,
    }


def merge_counted(row: dict, counted: dict | None) -> None:
    if not counted:
        return
    row.update({k: v for k, v in counted.items() if k != "status"})
    if "status" in counted:
        row["status"] = counted["status"]
    if counted.get("bytes_counted_full"):
        row["bytes_counted"] = counted["bytes_counted_full"]
        grid = f"{counted['programs_run_full']} of {counted['programs_medium']} programs run"
        row["counted_how"] = (f"full grid, lengths capped ({grid}), scaled to full size"
                              if counted.get("medium_shape") else f"full size ({grid})")
    elif counted.get("bytes_counted_small") and counted.get("bytes_min_small"):
        row["bytes_counted"] = counted["bytes_counted_small"] / counted["bytes_min_small"] * row["bytes_min"]
        row["counted_how"] = "scaled-down shape, ratio to minimum applied at full size"
    if row["bytes_counted"]:
        row["counted_ratio"] = row["bytes_counted"] / row["bytes_min"]
        if row["flops"]:
            row["intensity_counted"] = row["flops"] / row["bytes_counted"]
        if row["op"] == "paged_prefill":
            row["fa2_ratio"] = row["bytes_counted"] / row["fa2_bytes"]


def goal_results(rows: list[dict], spec: GpuSpec, measured: bool) -> list[dict]:
    """Each goal on each case it applies to, evaluated for ``spec`` (``gpu``). The bandwidth goal applies on
    every GPU, and only to a measurement: a modeled report leaves it out (the markdown says so)."""
    out = []
    for goal, text in GOALS.items():
        for r in rows:
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


# ------------------------------------------------------------------------------------------------ outputs

def _fmt(v, spec="{:.3g}"):
    return "—" if v is None else spec.format(v)


def _bytes(v):
    if v is None:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def write_markdown(path, doc: dict, goals: list[dict], unavailable: list[str]) -> None:
    spec, measured = doc["gpu"], doc["measured"]
    mode = "MEASURED on this GPU" if measured else "MODELED: no GPU here"
    lines = [f"# servekernels roofline report: {spec['name']} ({mode})", "",
             f"commit `{doc['commit']}`, {doc['created_utc']}, machine: {doc['machine']}, "
             f"{'quick catalogue' if doc['quick'] else 'full catalogue'}.", ""]
    sel = doc.get("selection")
    if sel and sel.get("k"):
        lines += [f"**A selection:** `-k {' -k '.join(sel['k'])}` (substring match) kept {len(sel['cases'])} of "
                  f"{sel['of']} {'quick ' if doc['quick'] else ''}cases: " + ", ".join(sel["cases"]) + ".", ""]
    counting = ("Counted traffic: each Triton kernel runs under the Triton interpreter with counting hooks (bytes "
                "of the enabled lanes of every load and store, lanes of one access sharing an address counted "
                "once). Attention and GEMMs are counted on stride-0 inputs (no memory) with the full grid (batch, "
                "heads, N tiles, experts, rows as at full size) and per-program work capped (decode context <= "
                f"{DECODE_CTX_CAP}, prefill sequences <= {PREFILL_LEN_CAP} tokens, GEMM K <= {GEMM_K_CAP}), "
                f"a stratified sample of {FULL_SAMPLES} programs of each larger launch run and weighted (an "
                "unbiased estimate; `programs (run)`), then scaled to full size by the ratio to the minimum "
                "(decode, GEMMs: conservative, overheads shrink with length) or to the FlashAttention-2 model "
                "(prefill); merge_states, write_kv and fused_moe are counted at the scaled-down parity shape, "
                "their counted/minimum ratio applied at full size. Parity: every kernel's output at the "
                "scaled-down shape (same heads, GQA ratio, head size, block size, dtypes, expert count; shorter "
                "contexts, fewer tokens, narrower GEMMs: `parity at`) against the float64 reference, with a "
                "derived tolerance.")
    if not doc.get("counted", True):
        counting = (f"Counting skipped (`--no-count`): no counted traffic; {doc['parity_note']}.")
    if not measured:
        lines += ["**Every time here is modeled** (`t_roof = max(flops / peak, bytes_min / bandwidth)`, dense "
                  "peaks); nothing was timed. " + counting, ""]
    else:
        lines += ["Times are measured with `perf.harness` (CUDA events per call, median with p20/p80, cold L2 "
                  "by a >= 2x L2 flush before every call, no CUDA graphs for any provider), outputs re-checked "
                  "against the float64 reference after timing. " + counting, ""]
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
    t_head = "t measured (us)" if measured else "t modeled (us)"
    lines += ["## Kernels", "",
              f"| op | case | bound | GFLOP | min bytes | counted bytes | counted/min | {t_head} | % of roof | "
              "programs (run) | parity | max rel err | parity at |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in doc["rows"]:
        if r["status"] != "ok" and r.get("bytes_counted_small") is None and not r.get("t_measured_us"):
            lines.append(f"| {r['op']} | {r['case']} | {r['bound']} | {r['flops'] / 1e9:.3g} | "
                         f"{_bytes(r['bytes_min'])} | — | — | {_fmt(r['t_roof_us'], '{:.2f}')} (modeled) | — | — | "
                         f"{r['status']} | — | — |")
            continue
        t = r["t_measured_us"] if measured else r["t_roof_us"]
        at = r.get("counted_shape") or {}
        at_s = ", ".join(f"{k}={v['sum'] if isinstance(v, dict) else v}" for k, v in at.items()
                         if k in ("num_seqs", "seq_len", "q_len", "tokens", "n", "k", "num_tokens", "hidden"))
        if r.get("parity_at", "").startswith("full size"):
            at_s = "full size" + (f"; {at_s}" if at_s else "")
        med = r.get("programs_medium")
        progs = f"{med} ({r['programs_run_full']})" if med else f"{r.get('programs_small', '—')} (scaled)"
        counted = _bytes(r["bytes_counted"]) + ("" if med and not r.get("medium_shape") else
                                                " (scaled)") if r["bytes_counted"] else r.get("counting", "—")
        lines.append(
            f"| {r['op']} | {r['case']} | {r['bound']} | {r['flops'] / 1e9:.3g} | {_bytes(r['bytes_min'])} | "
            f"{counted} | {_fmt(r.get('counted_ratio'), '{:.3f}')} | {_fmt(t, '{:.2f}')}"
            f"{'' if measured else ' (modeled)'} | "
            f"{_fmt(r['pct_of_roof'], '{:.0f}%') if measured else 'modeled'} | {progs} "
            f"| {r['parity']} | {_fmt(r['max_rel_err'], '{:.1e}')} | {at_s} |")
    lines += [""] + compile_section(doc, get_spec_from_json)
    peers = [r for r in doc["rows"] if r.get("peers_us")]
    if peers:
        lines += ["", "Baselines (same timing policy and output check; us, or why not):", ""]
        for r in peers:
            lines.append(f"- {r['case']}: servekernels {_fmt(r['t_measured_us'], '{:.2f}')}; " + "; ".join(
                f"{n} {v:.2f}" if isinstance(v, float) else f"{n}: {v}" for n, v in r["peers_us"].items()))
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
    dec = [r for r in doc["rows"] if r["op"] == "paged_decode" and r["shape"]["num_seqs"] == 1
           and r.get("programs_full")]
    if dec:
        lines += ["", "Split-KV decode of one long sequence (programs at full size, from the grids the kernel "
                  f"launches; the GPU has {spec['sms']} SMs): "
                  + ", ".join(f"{r['case']}: {r['programs_full']} programs" for r in dec) + "."]
    lines += ["", "## Where the bytes go", "",
              "Counted bytes per kernel argument at the scaled-down parity shape (every program run), next to "
              "the op's minimum there: an argument read several times shows which re-read the schedule pays "
              "(e.g. activations once per N tile, a cache once per query head).", "",
              "| case | min bytes (scaled shape) | counted by argument |", "| --- | ---: | --- |"]
    for r in doc["rows"]:
        by = r.get("traffic_by_argument_small")
        if by:
            parts = ", ".join(f"{k} {_bytes(v)}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
            lines.append(f"| {r['case']} | {_bytes(r.get('bytes_min_small'))} | {parts} |")
    lines += ["", "## Roofline", "", "![roofline](roofline.png)", "",
              "One marker per op. Filled: FLOPs over minimum bytes at " + ("the measured time" if measured else
              "t_roof (on the roof, modeled)") + "; hollow: FLOPs over counted bytes at t_model (modeled, never "
              "above the roof); points numbered, the numbers listed beside the plot. write_kv does no FLOPs "
              "and is not plotted.", "", "## Traffic", "", "![counted / minimum bytes](traffic.png)", "",
              "Counted / minimum bytes per case (counted under the interpreter), one bar per implementation "
              "counted.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def get_spec_from_json(d: dict) -> GpuSpec:
    return GpuSpec(**{k: (tuple(v) if k == "match" else v) for k, v in d.items()})


CSV_METRICS = ("flops", "bytes_min", "bytes_counted", "counted_ratio", "intensity", "t_roof_us", "t_measured_us",
               "pct_of_roof", "max_rel_err", "programs_full", "bytes_counted_small", "bytes_min_small",
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


def commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------- measuring

def measure_case(case: Case, policy, peers: bool = True) -> dict:
    """Time the servekernels kernel at full size (cold L2, CUDA events), re-check its output after timing, and
    time every registered baseline provider (``perf/peer_providers.py``) under the same policy and check."""
    from perf.harness import compare_providers, load_peer_providers, measure_provider
    from roofline import ops

    prep = ops.prepare(case.op, case.shape, "cuda", seed=0)
    failures = []
    expected = []

    def check(out):
        if not expected:
            expected.append(prep.expected())
        ok, rel, detail = prep.check(out, expected[0])
        failures.append((ok, rel, detail))
        if not ok:
            raise AssertionError(detail)

    try:
        timing = measure_provider(case.op, "servekernels", prep.args, prep.kwargs, policy=policy, check=check)
    except AssertionError:
        ok, rel, detail = failures[-1]
        return {"parity": "FAIL", "max_rel_err": rel, "parity_detail": detail[:2000], "parity_at": "full size"}
    ok, rel, _ = failures[-1]
    row = {"t_measured_us": timing.median_us, "t_p20_us": timing.p20_us, "t_p80_us": timing.p80_us,
           "timing": timing.to_json(), "parity_full": "pass" if ok else "FAIL", "max_rel_err_full": rel}
    if peers:
        why = load_peer_providers()
        from perf.harness import providers

        names = [n for n in providers(case.op) if n != "servekernels"]
        results = compare_providers(case.op, prep.args, prep.kwargs, policy=policy, check=check, names=names) \
            if names else {}
        row["peers_us"] = {n: (r.median_us if hasattr(r, "median_us") else r) for n, r in results.items()}
        if why:
            row["peers_note"] = why
    return row


# -------------------------------------------------------------------------------------------------- run

def select(cases: list[Case], quick: bool, names, exact: bool = False) -> list[Case]:
    """``--quick`` cases (or all), then those ``-k`` names select (substrings, or exact names)."""
    from servekernels.usage import select_names

    if quick:
        cases = [c for c in cases if c.quick]
    chosen = set(select_names([c.name for c in cases], names, exact=exact,
                              hint=" (in the --quick catalogue)" if quick else ""))
    return [c for c in cases if c.name in chosen]


def build(cases: list[Case], spec: GpuSpec, *, measured: bool, quick: bool, count: bool = True,
          policy=None) -> tuple[dict, list[dict], list[str]]:
    from kernels.runtime import interpreter_enabled, machine_label
    from roofline import ops

    steps = len(cases) * ((1 if count else 0) + (1 if measured else 0)) or 1
    progress = Progress(steps, "report")
    rows = [model_row(c, spec) for c in cases]
    counted: dict[str, dict] = {}
    if count:
        counted = count_cases(cases, progress, spec) if interpreter_enabled() else \
            _count_in_subprocess(cases, progress, spec)
    elif interpreter_enabled():
        counted = {name: {"compile": m} for name, m in compile_cases(cases, spec).items()}
    unavailable = sorted({f"{c.op}: not available in this build" for c in cases if ops.available(c.op)
                          or "not available" in counted.get(c.name, {}).get("status", "")})
    from roofline.compile_metrics import row_columns
    from roofline.timing_model import calibration, modeled_times

    for row, case in zip(rows, cases):
        missing = ops.available(case.op)
        merge_counted(row, counted.get(case.name) if not missing else {"status": missing})
        row.update(row_columns(row.get("compile")))
        if measured:
            if not missing:
                try:
                    row.update(measure_case(case, policy))
                except Exception as exc:
                    row["status"] = f"timing error: {type(exc).__name__}: {str(exc)[:300]}"
            if row.get("parity_full"):  # the full-size check after timing is a parity verdict of its own
                row["parity"] = "FAIL" if "FAIL" in (row["parity"], row["parity_full"]) else "pass"
                row["max_rel_err"] = max(row["max_rel_err"] or 0.0, row["max_rel_err_full"])
                row["parity_at"] = "full size" + (" and scaled-down" if row.get("counted_shape") else "")
            progress.step(f"timed {case.name}")
            if row["t_measured_us"]:
                row["pct_of_roof"] = 100.0 * row["t_roof_us"] / row["t_measured_us"]
        row.update(modeled_times(row, row.get("compile"), spec))
        if row["t_measured_us"] and row["t_model_us"]:
            row["measured_over_model"] = row["t_measured_us"] / row["t_model_us"]
    doc = {"gpu": spec.to_json(), "measured": measured, "commit": commit(), "quick": quick,
           "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_label(),
           "counted": count, "parity_note": parity_note(measured, count),
           "time_note": "modeled" if not measured else "measured", "rows": rows,
           "calibration": calibration(rows)}
    return doc, goal_results(rows, spec, measured), unavailable


def parity_note(measured: bool, count: bool) -> str:
    where = [w for w, on in (("at full size after timing", measured),
                             ("at the scaled-down shape under the Triton interpreter", count)) if on]
    return "parity checked " + " and ".join(where) if where else "parity not checked (--no-count, no GPU)"


def write_all(out_dir, doc, goals, unavailable) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    doc = dict(doc, goals=goals, unavailable=unavailable)
    paths = [os.path.join(out_dir, n) for n in ("report.json", "report.csv", "report.md", "roofline.png",
                                                "traffic.png")]
    with open(paths[0], "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
    write_csv(paths[1], doc)
    write_markdown(paths[2], doc, goals, unavailable)
    from roofline import plots

    spec = get_spec_from_json(doc["gpu"])
    plots.roofline(paths[3], doc, spec)
    plots.traffic(paths[4], doc, spec)
    return paths


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def _worker_spec(args) -> GpuSpec | None:
    """The counting worker's GPU (the parent's ``--gpu``), or None for one only the parent's spec file knows."""
    try:
        return get_spec(args.gpu or DEFAULT_SLUG, args.gpu_spec_file)
    except ValueError:
        return None


def run(args) -> int:
    from kernels.runtime import cuda_available, interpreter_enabled

    from servekernels.usage import UsageError, check_output_dir, user_input

    if args.count_cases:
        with open(args.count_cases) as f:
            cases = [Case(**c) for c in json.load(f)]
    else:
        cases = select(catalogue(), args.quick, args.select, args.exact)
    if args.gpu_spec_file and not os.path.isfile(args.gpu_spec_file):
        raise UsageError(f"--gpu-spec-file: no file {args.gpu_spec_file!r}")
    if args.count_worker:  # child process of a GPU run: count under the interpreter, write JSON
        with open(args.count_worker, "w") as f:
            json.dump(count_cases(cases, spec=_worker_spec(args)), f, default=_json_default)
        return 0
    measured = cuda_available() and not interpreter_enabled()
    spec = None
    if measured:
        spec = detect_spec(args.gpu_spec_file)
        if spec is None:
            import torch

            name = torch.cuda.get_device_name(0)
            if not args.gpu:
                print(f"report: GPU {name!r} is not in the spec table; pass --gpu SLUG (the closest) or add it "
                      "with --gpu-spec-file (see roofline/specs.py)", file=sys.stderr)
                return 2
        if args.gpu and spec is not None and args.gpu != spec.slug:
            print(f"report: measuring on {spec.slug} (detected); --gpu {args.gpu} ignored", file=sys.stderr)
    if spec is None:
        with user_input(vars(args)):
            spec = get_spec(args.gpu or DEFAULT_SLUG, args.gpu_spec_file)
    out_dir = args.out or os.path.join("reports", spec.slug)
    check_output_dir("--out", out_dir)  # before any work
    from perf.harness import DEFAULT_POLICY, QUICK_POLICY

    doc, goals, unavailable = build(cases, spec, measured=measured, quick=args.quick, count=not args.no_count,
                                    policy=QUICK_POLICY if args.quick else DEFAULT_POLICY)
    doc["selection"] = {"k": list(args.select or []), "cases": [c.name for c in cases],
                        "of": len(select(catalogue(), args.quick, None))}
    paths = write_all(out_dir, doc, goals, unavailable)
    if getattr(args, "invariance", False):
        from roofline.invariance import write_section

        paths.append(write_section(out_dir, cases, spec))
    for msg in unavailable:
        print(f"report: {msg}", file=sys.stderr)
    bad = [r["case"] for r in doc["rows"] if r["parity"] == "FAIL"]
    print(f"report ({'measured' if measured else 'modeled for ' + spec.slug}): {len(doc['rows'])} cases -> "
          + ", ".join(paths))
    if bad:
        print(f"report: parity FAILED for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
