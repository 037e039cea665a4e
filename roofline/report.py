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

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from kernels import runtime  # its functions are looked up at each call (tests patch them)
from kernels.impls import Provider, baselines, load
from kernels.ops import Case, get
from kernels.testing.integrity import Breach, JudgeSnapshot, fresh_copy, run_seed
from perf import harness  # its functions are looked up at each call (tests patch them)
from roofline import ops, plots
from roofline.catalogue import case_cost, catalogue, json_shape, select
from roofline.compile_metrics import row_columns
from roofline.goals import GOAL_LIMITS, GOALS, goal_results  # noqa: F401 - re-exported
from roofline.report_counting import (FULL_SIZE_OPS, _count_in_subprocess, compile_cases, count_case,  # noqa: F401
                                      count_cases, count_full, full_programs, medium_shape)
from roofline.report_markdown import get_spec_from_json, write_csv, write_markdown  # noqa: F401
from roofline.invariance import write_section
from roofline.specs import DEFAULT_SLUG, GpuSpec, check_spec_files, detect_spec, get_spec
from roofline.timing_model import calibration, modeled_times
from servekernels.trace.coverage import coverage as trace_coverage
from servekernels.usage import UsageError, check_output_dir, user_input

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
    p.add_argument("--skip", action="append", metavar="NAME", default=[],
                   help="leave out cases whose name contains NAME (repeatable; after -k)")
    p.add_argument("--no-count", action="store_true", help="skip interpreter counting and the scaled-down parity "
                   "check (a GPU run still checks parity at full size)")
    p.add_argument("--invariance", action="store_true", help="also write invariance.md: the cost of "
                   "batch_invariant=True per case and which invariance properties hold (roofline/invariance.py)")
    p.add_argument("--graphs", action="store_true", help="time with CUDA graphs: every provider's timed call "
                   "(its launch sequence, validate=False + host hints for ours) captured once and replayed, for "
                   "every provider alike (default: eager launches); recorded in report.json/md")
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="implementation to report (repeatable, side by side with ours/theirs ratios): servekernels "
                   "(default), reference, torch, vllm, an entry point of servekernels.impls or pkg.mod[:obj]")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="the run seed every input derives from, counted and measured (default: fixed for the "
                   "built-in providers, fresh for a user's implementation; printed, so a run replays with --seed N)")
    p.add_argument("--count-worker", default=None, help=argparse_hidden())
    p.add_argument("--count-impl", default="servekernels", help=argparse_hidden())
    p.add_argument("--count-cases", default=None, help=argparse_hidden())


def argparse_hidden():
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


# -------------------------------------------------------------------------------------------------- rows

def model_row(case: Case, spec: GpuSpec, impl: str = "servekernels") -> dict:
    c = case_cost(case.op, case.shape)
    roof = c.roof(spec)
    s = case.shape
    fa2 = get(case.op).fa2_bytes
    return {
        "op": case.op, "case": case.name, "impl": impl, "shape": json_shape(case.op, s),
        "dtype": s.get("dtype"), "kv_dtype": s.get("kv_dtype"), "weight_format": s.get("weight_format"),
        "compute_dtype": c.compute_dtype,
        "flops": c.flops, "bytes_min": c.bytes_min, "bytes_min_breakdown": c.breakdown,
        "intensity": c.flops / c.bytes_min if c.bytes_min else None,
        "bound": roof["bound"], "t_roof_us": roof["t_roof_s"] * 1e6,
        "t_compute_us": roof["t_compute_s"] * 1e6, "t_memory_us": roof["t_memory_s"] * 1e6,
        "bytes_counted": None, "counted_ratio": None, "t_measured_us": None, "pct_of_roof": None,
        "parity": "not checked", "max_rel_err": None, "status": "ok", "timed_path": None,
        "host_validated_us": None, "host_launch_us": None, "host_overhead": HOST_NOT_MEASURED,
        "goals": case.goal.split(",") if case.goal else [],
        "fa2_bytes": fa2(s) if fa2 else None,
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
        if row.get("fa2_bytes") is not None:
            row["fa2_ratio"] = row["bytes_counted"] / row["fa2_bytes"]


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

def measure_case(case: Case, policy, peers: bool = True, provider: Provider | None = None, seed: int = 0) -> dict:
    """Time ``provider`` (default ours) at full size (cold L2, CUDA events around its launch sequence:
    ``Provider.timed``, whose setup runs untimed), the timed calls alternating with a fresh input set
    (``integrity.fresh_copy``: new storage and values for the first argument), re-check its output after timing
    and at an iteration drawn from ``os.urandom`` with the registry's judge (each set against its own reference),
    and measure the host overhead of one validated call and one timed-path call apart; for ours also time every
    built-in baseline provider (``kernels.impls.baselines``: vLLM's kernels, torch SDPA) under the same policy
    and check."""
    provider = provider or load("servekernels")
    prep = ops.prepare(case.op, case.shape, "cuda", seed=seed, provider=provider)  # the run seed (report --seed)
    other = ops.Prepared(case.op, prep.spec, fresh_copy(prep.inputs), prep.fn)
    if not provider.internal:
        why = provider.why_unsupported(case.op, prep.args, prep.kwargs)  # decided once, untimed
        if why:
            return {"status": f"unsupported: {why}"}
    failures = []

    def checker(p):
        expected = []

        def check(out):
            if not expected:
                expected.append(p.expected())
            ok, rel, detail = p.check_raw(out, expected[0])
            failures.append((ok, rel, detail))
            if not ok:
                raise AssertionError(detail)

        return check

    check = checker(prep)
    try:
        timing = harness.measure_impl(case.op, provider, prep.args, prep.kwargs, policy=policy, check=check,
                                      fresh=[(other.args, other.kwargs, checker(other))])
    except Breach as exc:
        ok, rel, detail = failures[-1]
        return {"parity": "FAIL", "max_rel_err": rel, "parity_detail": f"{exc.defence}: {detail}"[:2000],
                "parity_at": "full size"}
    ok, rel, _ = failures[-1]
    row = {"t_measured_us": timing.median_us, "t_p20_us": timing.p20_us, "t_p80_us": timing.p80_us,
           "timing": timing.to_json(), "parity_full": "pass" if ok else "FAIL", "max_rel_err_full": rel,
           "timed_path": timing.timed_path,
           "host_validated_us": timing.host_validated_us, "host_launch_us": timing.host_launch_us,
           "host_overhead": HOST_MEASURED}
    if peers and provider.internal:
        found, notes = baselines(case.op)
        results = harness.compare_providers(case.op, found, prep.args, prep.kwargs, policy=policy, check=check) \
            if found else {}
        row["peers_us"] = {n: (r.median_us if hasattr(r, "median_us") else r) for n, r in results.items()}
        row["peers_timed_path"] = {n: r.timed_path for n, r in results.items() if hasattr(r, "timed_path")}
        if notes:
            row["peers_note"] = "; ".join(notes)
    return row


HOST_MEASURED = ("median host wall time of one call, a synchronize before each (the call's own device-to-host "
                 "syncs count): host_validated_us = a validated call (the implementation's public function as a "
                 "user calls it), host_launch_us = the timed path's call")
HOST_NOT_MEASURED = ("not measured (no GPU here): host time of one call is measured on a GPU run; for this CPU's "
                     "host time per call (kernels replaced by a recorder) run `python -m perf.host_overhead`")


def policy_from_args(args):
    """The timing policy of a report run: quick or default, ``cuda_graphs`` from ``--graphs``, for every provider
    alike."""
    return replace(harness.QUICK_POLICY if args.quick else harness.DEFAULT_POLICY, cuda_graphs=bool(getattr(args, "graphs", False)))


# -------------------------------------------------------------------------------------------------- run

def build(cases: list[Case], spec: GpuSpec, *, measured: bool, quick: bool, count: bool = True,
          policy=None, impls: list[Provider] | None = None, seed: int = 0) -> tuple[dict, list[dict], list[str]]:
    """One row per (case, implementation), in case order; ``impls`` (providers, resolved once by the caller)
    default ours. Where several
    implementations ran, each row of one that is not the first gets ``ours_over_theirs`` ratios (counted bytes,
    programs and kernel launches at the counted shape, measured time: the first implementation's over this
    row's) and the first's rows ``counted_ratio_by_impl`` (the traffic plot's bars, counted/min at the counted
    shape for every implementation alike)."""
    providers = impls or [load("servekernels")]
    impls = [p.name for p in providers]
    steps = len(cases) * len(impls) * ((1 if count else 0) + (1 if measured else 0)) or 1
    progress = Progress(steps, "report")
    rows, unavailable = [], []
    for provider in providers:
        impl = provider.name
        counted: dict[str, dict] = {}
        if count:
            counted = count_cases(cases, progress, spec, provider, seed) if runtime.interpreter_enabled() else \
                _count_in_subprocess(cases, progress, spec, provider, seed)
        elif runtime.interpreter_enabled() and provider.internal:
            counted = {name: {"compile": m} for name, m in compile_cases(cases, spec).items()}
        unavailable += [f"{impl}: {c.op} not provided" for c in cases if not provider.provides(c.op)]
        for case in cases:
            row = model_row(case, spec, impl)
            rows.append(row)
            _fill_row(row, case, counted.get(case.name), measured, policy, progress, spec, provider, seed)
    _side_by_side(rows, impls)
    doc = {"gpu": spec.to_json(), "measured": measured, "commit": commit(), "quick": quick,
           "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": runtime.machine_label(),
           "counted": count, "parity_note": parity_note(measured, count), "impls": impls, "seed": seed,
           "time_note": "modeled" if not measured else "measured", "rows": rows,
           "timing_policy": asdict(policy) if policy is not None else None,
           "cuda_graphs": bool(policy is not None and policy.cuda_graphs),
           "calibration": calibration([r for r in rows if r["impl"] == "servekernels"]),
           "trace_coverage": coverage_summary()}
    return doc, goal_results(rows, spec, measured), sorted(set(unavailable))


def coverage_summary() -> dict:
    """Which published FlashInfer-Trace definition families the suite judges (``servekernels trace coverage``)."""
    c = trace_coverage()
    return {"families_judged": len(c["fib_judged"]), "families": len(c["fib_families"]),
            "definitions_judged": c["fib_names_judged"], "definitions": c["fib_names"],
            "templates_judged": len(c["fi_judged"]), "templates": len(c["fi_templates"]),
            "judged": c["fib_judged"]}


def _side_by_side(rows: list[dict], impls: list[str]) -> None:
    if len(impls) < 2:
        return
    first = {r["case"]: r for r in rows if r["impl"] == impls[0]}
    for r in rows:
        ours = first.get(r["case"])
        if ours is None:
            continue
        # side by side, every implementation is counted the same way: at the counted (scaled-down) shape (ours
        # is also counted at full size, which the others are not: comparing the two would mix methods)
        if r.get("bytes_counted_small") and r.get("bytes_min_small"):
            ours.setdefault("counted_ratio_by_impl", {})[r["impl"]] = r["bytes_counted_small"] / r["bytes_min_small"]
        if r is ours:
            continue
        ratio = {}
        for key in ("bytes_counted_small", "programs_small", "launches_small", "t_measured_us"):
            a, b = ours.get(key), r.get(key)
            if a and b:
                ratio[key] = a / b
        r["ours_over_theirs"] = ratio


def _fill_row(row, case, counted, measured, policy, progress, spec, provider, seed: int = 0) -> None:
    """Counted fields, compile metrics, the measurement (on a GPU) and the modeled times of one row."""
    merge_counted(row, counted if provider.provides(case.op) else {"status": "not provided",
                                                                    "parity": "not provided"})
    row.update(row_columns(row.get("compile")))
    missing = not provider.provides(case.op) or row.get("parity") == "unsupported"
    if measured:
        if not missing:
            try:
                row.update(measure_case(case, policy, provider=provider, seed=seed))
            except Exception as exc:
                row["status"] = f"timing error: {type(exc).__name__}: {str(exc)[:300]}"
        if row.get("parity_full"):  # the full-size check after timing is a parity verdict of its own
            row["parity"] = "FAIL" if "FAIL" in (row["parity"], row["parity_full"]) else "pass"
            row["max_rel_err"] = max(row["max_rel_err"] or 0.0, row["max_rel_err_full"])
            row["parity_at"] = "full size" + (" and scaled-down" if row.get("counted_shape") else "")
        progress.step(f"timed {case.name}")
        if row["host_launch_us"] is None:
            why = row["status"] if row["status"] != "ok" else f"parity {row['parity']}"
            row["host_overhead"] = f"not measured: this row was not timed ({why})"
        impossible = impossible_speed(row)
        if impossible:
            row["status"], row["impossible_us"], row["t_measured_us"] = impossible, row["t_measured_us"], None
        if row["t_measured_us"]:
            row["pct_of_roof"] = 100.0 * row["t_roof_us"] / row["t_measured_us"]
    row.update(modeled_times(row, row.get("compile"), spec))
    if row["t_measured_us"] and row["t_model_us"]:
        row["measured_over_model"] = row["t_measured_us"] / row["t_model_us"]


IMPOSSIBLE = "impossible: faster than the memory allows: check for caching or skipped work"


def impossible_speed(row: dict) -> str | None:
    """``IMPOSSIBLE`` (with the numbers) for a measured time below ``bytes_min / bandwidth``, else None. Every
    timed call starts from a cold L2 and fresh inputs, so the bytes the op must touch (``bytes_min``: each input
    read once, each output written once) come from DRAM at most at the GPU's peak bandwidth (``t_memory_us``).
    Counted bytes are not the bound: they count re-reads a cache may serve. Such a time is not a record: the row
    keeps it as ``impossible_us`` and gets no ``t_measured_us``."""
    t, floor = row.get("t_measured_us"), row.get("t_memory_us")
    if t is None or not floor or t >= floor:
        return None
    return f"{IMPOSSIBLE} ({t:.2f} us measured, {floor:.2f} us to move bytes_min at peak bandwidth)"


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
    spec = get_spec_from_json(doc["gpu"])
    plots.roofline(paths[3], doc, spec)
    plots.traffic(paths[4], doc, spec)
    return paths


def _json_default(o):
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


def resolve(name: str) -> Provider:
    """An ``--impl`` name as its provider (``kernels.impls.load``); one that does not load is a usage error."""
    try:
        return load(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def run(args) -> int:
    if args.count_cases:
        with open(args.count_cases) as f:
            cases = [Case(**c) for c in json.load(f)]
    else:
        cases = select(catalogue(), args.quick, args.select, args.exact)
        cases = [c for c in cases if not any(s in c.name for s in args.skip)]
        if not cases:
            raise UsageError(f"--skip {' '.join(args.skip)}: no case is left")
    try:
        check_spec_files(args.gpu_spec_file)  # a mistake in a spec file is the user's, before any work
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.count_worker:  # child process of a GPU run: count under the interpreter, write JSON
        with open(args.count_worker, "w") as f:
            json.dump(count_cases(cases, spec=_worker_spec(args), provider=resolve(args.count_impl),
                                  seed=args.seed or 0), f, default=_json_default)
        return 0
    measured = runtime.cuda_available() and not runtime.interpreter_enabled()
    spec = None
    if measured:
        spec = detect_spec(args.gpu_spec_file)
        if spec is None:
            import torch  # deferred: only a GPU run reaches here; the report's modules load without torch

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
    impls = list(dict.fromkeys(args.impl or ["servekernels"]))
    snapshot = JudgeSnapshot()  # before any implementation is imported
    providers = []
    for name in impls:  # the door: each --impl resolved once, here; a name that does not load is a usage error
        providers.append(resolve(name))
        try:
            snapshot.check(f"importing {name}")
        except Breach as exc:
            print(f"report: {name}: {exc}", file=sys.stderr)
            return 1
    seed = run_seed(getattr(args, "seed", None), impls)
    print(f"report: seed {seed} (replay: --seed {seed})", file=sys.stderr)
    doc, goals, unavailable = build(cases, spec, measured=measured, quick=args.quick, count=not args.no_count,
                                    policy=policy_from_args(args), impls=providers, seed=seed)
    try:
        snapshot.check(", ".join(impls))
    except Breach as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    doc["selection"] = {"k": list(args.select or []), "cases": [c.name for c in cases],
                        "of": len(select(catalogue(), args.quick, None))}
    paths = write_all(out_dir, doc, goals, unavailable)
    if getattr(args, "invariance", False):
        paths.append(write_section(out_dir, cases, spec))
    for msg in unavailable:
        print(f"report: {msg}", file=sys.stderr)
    for r in doc["rows"]:
        if str(r.get("status", "")).startswith("impossible"):
            print(f"report: {r['case']} [{r['impl']}]: {r['status']}", file=sys.stderr)
    bad = [f"{r['case']} [{r['impl']}]" for r in doc["rows"] if r["parity"] == "FAIL"]
    print(f"report ({'measured' if measured else 'modeled for ' + spec.slug}): {len(doc['rows'])} cases -> "
          + ", ".join(paths))
    if bad:
        print(f"report: parity FAILED for {', '.join(bad)} (replay: --seed {seed})", file=sys.stderr)
        return 1
    return 0
