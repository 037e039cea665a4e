"""The report's invariance section: the cost of ``batch_invariant=True`` per report case, and which properties hold.

For every catalogue case of an op that takes ``batch_invariant`` (``paged_decode``, ``paged_prefill``, the
grouped GEMMs, ``fused_moe``), the kernel runs at the case's small shape under the interpreter in the default
and the invariant mode: counted bytes and programs (``roofline.counting``). Programs at the full shape come
from the grids alone (``launches_only``: nothing executes). The modeled time of a mode is the case's minimum
bytes at full size times that mode's counted/minimum ratio at the small shape, over the GPU's HBM bandwidth
(memory-bound, no wave effects): a modeled figure, never a measurement. The properties table comes from
``kernels.testing.invariance`` (the same functions ``servekernels check --invariance`` runs).

``servekernels report --invariance`` writes ``invariance.md`` next to the report; ``python -m
roofline.invariance [--quick] [--gpu SLUG]`` prints the same tables.
"""
from __future__ import annotations

import argparse
import inspect
import os

from kernels.ops import get, registry
from kernels.runtime import configure_triton
from roofline import ops
from roofline.catalogue import case_cost, catalogue, select
from roofline.counting import count_traffic, launches_only
from roofline.lazy_inputs import lazy_inputs
from roofline.specs import DEFAULT_SLUG, get_spec
from servekernels.check_invariance import resolve


def invariant_ops() -> set[str]:
    """The registry's ops whose kernel takes ``batch_invariant`` (its launcher's signature says so)."""
    return {op for op, spec in registry().items()
            if "batch_invariant" in inspect.signature(spec.kernel_fn()).parameters}


def _count(case, mode_kw: dict, gpu):
    prep = ops.prepare(case.op, case.small, "cpu", seed=0)
    plan = get(case.op).plan(gpu) if get(case.op).plan else {}
    with count_traffic() as counter:
        ops.kernel(case.op)(*prep.args, **prep.kwargs, **plan, **mode_kw)
    if counter.failure:
        raise RuntimeError(counter.failure)
    return counter.total_bytes, counter.programs


def _full_programs(case, mode_kw: dict, gpu) -> int:
    args, kwargs = lazy_inputs(case)
    plan = get(case.op).plan(gpu) if get(case.op).plan else {}
    with launches_only() as counter:
        ops.kernel(case.op)(*args, **kwargs, **plan, **mode_kw)
    return counter.programs


def cost_rows(cases, spec) -> list[dict]:
    """One row per case: counted bytes and programs (small shape), full-shape programs, modeled time, per mode."""
    rows = []
    for case in cases:
        if case.op not in invariant_ops():
            continue
        row = {"case": case.name, "op": case.op}
        small_min = case_cost(case.op, case.small).bytes_min
        full_min = case_cost(case.op, case.shape).bytes_min
        try:
            for mode, kw in (("default", {}), ("invariant", {"batch_invariant": True})):
                b, p = _count(case, kw, spec)
                row[f"bytes_{mode}"], row[f"programs_{mode}"] = b, p
                try:
                    row[f"programs_full_{mode}"] = _full_programs(case, kw, spec)
                except Exception as exc:  # noqa: BLE001 - grids only: a failure loses this figure, nothing else
                    row[f"programs_full_{mode}"] = f"n/a ({type(exc).__name__})"
                row[f"t_model_us_{mode}"] = full_min * (b / small_min) / spec.hbm_bytes_per_s * 1e6
        except Exception as exc:  # noqa: BLE001 - counting is not parity: report it as not counted
            row["note"] = f"not counted: {type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
    return rows


def property_rows(impls=("servekernels",)) -> list[dict]:
    from kernels.testing import invariance as I  # deferred: it builds torch inputs; the report loads without torch

    rows = []
    for name in impls:
        try:
            impl = resolve(name)
        except Exception as exc:  # noqa: BLE001
            rows.append({"impl": name, "property": "(all)", "mode": "-", "verdict": f"not available: {exc}"})
            continue
        for prop, v in I.judge(impl):
            rows.append({"impl": name, "property": prop.name, "mode": v.mode, "verdict": v.label,
                         "promised": v.mode in prop.promised})
    return rows


def _r(x, fmt="{:.3g}"):
    return fmt.format(x) if isinstance(x, (int, float)) else str(x)


def markdown(costs: list[dict], props: list[dict], spec) -> str:
    lines = [f"## Batch invariance (modeled for {spec.slug}; counted under the interpreter)", "",
             "Cost of `batch_invariant=True` per case: counted bytes and programs at the case's small shape, "
             "programs of the full shape's grids, and modeled time (the full shape's minimum bytes times the "
             "mode's counted/minimum ratio, over HBM bandwidth).", "",
             "| case | bytes default | bytes invariant | x | programs default | programs invariant | "
             "full programs default | full programs invariant | t_model default (us) | t_model invariant (us) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in costs:
        if "note" in r:
            lines.append(f"| {r['case']} | {r['note']} |||||||||")
            continue
        ratio = r["bytes_invariant"] / r["bytes_default"] if r["bytes_default"] else float("nan")
        lines.append(f"| {r['case']} | {r['bytes_default']} | {r['bytes_invariant']} | {ratio:.2f} | "
                     f"{r['programs_default']} | {r['programs_invariant']} | {r['programs_full_default']} | "
                     f"{r['programs_full_invariant']} | {_r(r['t_model_us_default'])} | "
                     f"{_r(r['t_model_us_invariant'])} |")
    if props:
        lines += ["", "Properties (bitwise; `kernels/testing/invariance.py`; interpreter):", "",
                  "| impl | property | mode | promised | verdict |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {p['impl']} | {p['property']} | {p['mode']} | {'yes' if p.get('promised') else '-'} | "
                  f"{p['verdict']} |" for p in props]
    return "\n".join(lines) + "\n"


def write_section(out_dir: str, cases, spec, impls=("servekernels",)) -> str:
    """``invariance.md`` in ``out_dir`` (the report's hook); returns its path."""
    path = os.path.join(out_dir, "invariance.md")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(markdown(cost_rows(cases, spec), property_rows(impls), spec))
    return path


def main(argv=None) -> int:
    configure_triton()
    p = argparse.ArgumentParser(prog="python -m roofline.invariance", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--gpu", default=DEFAULT_SLUG)
    p.add_argument("-k", dest="select", action="append")
    p.add_argument("--no-properties", action="store_true")
    args = p.parse_args(argv)
    spec = get_spec(args.gpu)
    cases = select(catalogue(), args.quick, args.select)
    print(markdown(cost_rows(cases, spec), [] if args.no_properties else property_rows(), spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
