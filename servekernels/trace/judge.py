"""``servekernels trace judge DIR``: judge FlashInfer-Trace Solutions with this suite's oracle.

For each Definition (``definitions/**/*.json``; ``--definitions GLOB`` on the name) a family adapter maps it to
an op of the registry (``families.family_for_definition``); one that none maps is listed "not judged: <why>".
Each Solution of it (``solutions/**/*.json``; ``--solutions GLOB`` on the name) is built (python and triton:
its sources written to a private temporary package, the entry point imported; cuda, cpp and tilelang: "needs a
GPU build", not judged here) and run on the Definition's own workloads (``workloads/**/*.jsonl``: safetensors,
scalar and random inputs) and on ours (every check case of the op the Definition expresses, built fresh by the
registry: poisoned, loud, ragged) plus one shape drawn per run as ``servekernels check`` draws it (``OpSpec.draw``
from the run seed: ``trace judge --seed N`` replays a run, each Trace records its seed; fitted to the Definition's
constant axes where that is possible, ``drawn_shape``), judged, judged again on fresh values, then put through the
measured path's timed loop and its two re-checks on a recording device. Destination-passing Solutions get their
outputs pre-filled with NaN (an output they leave unwritten stays NaN and fails).

Each (solution, workload) is judged by the project's one judge (``kernels.testing.judge``): the float64
reference, the op's derived per-element tolerance, its extra checks (empty rows...) and diagnosis; beside it
flashinfer-bench's own rule (any non-finite output fails; an element fails when both ``|a - e| > atol`` and
``|a - e| / |e| > rtol``, 1e-2 each) on the same outputs in the Definition's terms, so a reader sees where the two
disagree. A Trace per (solution, workload) is appended to ``traces/<op_type>/<definition>.jsonl`` (one line,
written whole; a pair already there is skipped, so an interrupted run resumes), with one of the seven statuses
and what only this suite knows under ``evaluation.correctness.extra``. A breach of an integrity defence that is
not a shape or dtype is INCORRECT_NUMERICAL, the defence named first in the log ("drawn shape", "fresh values",
"integrity: re-check inside the timed loop"...) and under ``correctness.extra.servekernels.defence``.
"""
from __future__ import annotations

import datetime
import fnmatch
import hashlib
import importlib
import json
import math
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from servekernels.trace.schema import (Evaluation, Solution, Trace, TraceFormatError, Workload, _finite,
                                       load_definition, load_solution, load_traces)

GPU_LANGUAGES = ("cuda", "cpp", "tilelang")
FIB_ATOL = FIB_RTOL = 1e-2  # flashinfer-bench's defaults (flashinfer_bench/bench/config.py)


@dataclass
class Dataset:
    root: Path
    definitions: dict = field(default_factory=dict)  # name -> Definition
    solutions: dict = field(default_factory=dict)  # definition name -> [Solution]
    workloads: dict = field(default_factory=dict)  # definition name -> [Workload]


def load_dataset(root, definitions_glob: str | None = None, solutions_glob: str | None = None) -> Dataset:
    """Everything under ``root``; a malformed file raises ``TraceFormatError`` (one line: file and field)."""
    root = Path(root)
    ds = Dataset(root)
    where_defined = {}
    for p in sorted((root / "definitions").rglob("*.json")):
        d = load_definition(p, root)
        if definitions_glob and not fnmatch.fnmatch(d.name, definitions_glob):
            continue
        if d.name in ds.definitions:
            raise TraceFormatError(str(p.relative_to(root)), "name", f"duplicate definition name {d.name!r}")
        ds.definitions[d.name] = d
        where_defined[d.name] = str(p.relative_to(root))
    for p in sorted((root / "solutions").rglob("*.json")):
        s = load_solution(p, root)
        if solutions_glob and not (fnmatch.fnmatch(s.name, solutions_glob)
                                   or fnmatch.fnmatch(str(p.relative_to(root)), solutions_glob)):
            continue
        ds.solutions.setdefault(s.definition, []).append(s)
    for p in sorted((root / "workloads").rglob("*.jsonl")):
        for t in load_traces(p, root, definition=p.stem):
            d = ds.definitions.get(t.definition)
            custom = [n for n, s in t.workload.inputs.items() if s.type == "custom"]
            if d is not None and custom and not d.extra.get("custom_inputs_entrypoint"):
                raise TraceFormatError(where_defined[t.definition], "custom_inputs_entrypoint",
                                       f"missing, and {p.relative_to(root)} (workload {t.workload.uuid}) has custom "
                                       f"inputs ({', '.join(custom)}) that only it makes")
            ds.workloads.setdefault(t.definition, []).append(t.workload)
    return ds


# ------------------------------------------------------------------------------------------------ building

class BuildError(Exception):
    pass


def build(solution: Solution):
    """The Solution's entry function, imported from a private temporary package; ``BuildError`` when it does
    not compile or import."""
    if solution.language in GPU_LANGUAGES:
        raise NotImplementedError(f"needs a GPU build ({solution.language}): judged on a GPU, not here")
    digest = hashlib.sha1(json.dumps(solution.to_json()).encode()).hexdigest()[:12]
    pkg = f"_sk_solution_{digest}"
    tmp = Path(tempfile.mkdtemp(prefix="sk-solution-"))
    (tmp / pkg).mkdir()
    (tmp / pkg / "__init__.py").write_text("")
    for src in solution.sources:
        path = tmp / pkg / src.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src.content)
        for parent in path.relative_to(tmp / pkg).parents:
            init = tmp / pkg / parent / "__init__.py"
            if not init.exists():
                init.write_text("")
    module = pkg + "." + ".".join(Path(solution.entry_file).with_suffix("").parts)
    sys.path.insert(0, str(tmp))
    try:
        mod = importlib.import_module(module)
        fn = getattr(mod, solution.entry_symbol)
    except Exception as exc:
        raise BuildError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}") from None
    finally:
        sys.path.remove(str(tmp))
    if not callable(fn):
        raise BuildError(f"{solution.entry_point}: not callable")
    return fn


def axis_values(definition, named: dict, known: dict | None = None) -> dict:
    """Every axis's value: const from the Definition, ``known`` (a workload's ``axes``), var bound from the
    inputs' shapes, expr evaluated (SOL-ExecBench: an expression over the others)."""
    values = dict(definition.const_axes())
    values.update(known or {})
    for spec in (*definition.inputs.values(), *definition.outputs.values()):
        values.update({d: int(d) for d in spec.shape or [] if d.isdecimal()})  # fi_trace's literal extents
    for name, spec in definition.inputs.items():
        t = named.get(name)
        if spec.shape is None or not hasattr(t, "shape"):
            continue
        for ax, size in zip(spec.shape, t.shape):
            values.setdefault(ax, int(size))
    for name, ax in definition.axes.items():
        if ax.type == "expr" and name not in values:
            values[name] = int(eval(compile(ax.expression, "<axis>", "eval"), {"__builtins__": {}}, dict(values)))
    return values


def torch_dtype(name: str):
    """The torch dtype a Definition names (``bfloat16``, ``int64``, ``bool``, ``float8_e4m3fn``...)."""
    import torch

    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"dtype {name!r}: not a torch dtype")
    return dt


def solver(definition, fn, destination_passing: bool, out_dtypes: dict | None = None):
    """``solve(named inputs) -> named outputs``: the Solution called with the Definition's inputs in order
    (None for an optional input the call does not have), outputs NaN-prefilled when destination-passing."""
    import torch

    def solve(named: dict) -> dict:
        args = [named.get(n) for n in definition.inputs]
        outs = {}
        if destination_passing:
            axes = axis_values(definition, named)
            in_place = definition.in_place
            for name, spec in definition.outputs.items():
                if name in in_place:
                    outs[name] = named[in_place[name]]
                    continue
                dt = spec.dtype if spec.dtype != "unknown" else (out_dtypes or {}).get(name, "float32")
                shape = [axes[a] for a in spec.shape or []]
                dtype = torch_dtype(dt)
                if dtype.is_floating_point:
                    outs[name] = torch.full(shape, float("nan"), dtype=dtype)
                else:
                    outs[name] = torch.full(shape, torch.iinfo(dtype).max if dtype != torch.bool else True, dtype=dtype)
            fn(*args, *[outs[n] for n in definition.outputs if n not in in_place])
            return outs
        got = fn(*args)
        if not isinstance(got, (tuple, list)):
            got = (got,)
        if len(got) != len(definition.outputs):
            raise ValueError(f"returned {len(got)} values, the definition has {len(definition.outputs)} outputs")
        return dict(zip(definition.outputs, got))

    return solve


# ------------------------------------------------------------------------------------------------ workloads

def custom_inputs_fn(definition):
    """SOL-ExecBench's input generator: the function the Definition's ``custom_inputs_entrypoint`` names, from its
    reference module (executed here, in the task's own process); ``TraceFormatError`` when the field is absent."""
    entry = definition.extra.get("custom_inputs_entrypoint")
    if not entry:
        raise TraceFormatError(definition.name, "custom_inputs_entrypoint",
                               "missing: its workloads have custom inputs, which only that function makes")
    ns: dict = {"__name__": f"_sk_reference_{definition.name}"}
    exec(compile(definition.reference, f"<{definition.name} reference>", "exec"), ns)  # noqa: S102 - its own code
    fn = ns.get(entry)
    if not callable(fn):
        raise TraceFormatError(definition.name, "custom_inputs_entrypoint",
                               f"{entry!r} is not a function of the reference")
    return fn


def load_workload(root: Path, definition, workload: Workload, device: str = "cpu", family=None,
                  custom=None) -> dict:
    """A Workload's inputs by name (safetensors blobs, scalars, seeded random tensors (``family``: its
    ``random_input`` shapes a random one as flashinfer-bench generates it, e.g. a softmax for sampling probs), and
    SOL-ExecBench's ``custom`` inputs: ``custom`` (default ``custom_inputs_fn(definition)``) called as SOL calls it,
    ``fn(axes_and_scalars, device) -> {input: tensor or scalar}`` with every axis resolved (const, the workload's
    var, expr) and the workload's scalar inputs, torch's generator seeded from the workload's uuid)."""
    import torch
    from safetensors.torch import load_file

    axes = axis_values(definition, {}, workload.axes)
    named, cache = {}, {}
    seed = int(hashlib.sha1(workload.uuid.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    wanted = [n for n, spec in workload.inputs.items() if spec.type == "custom"]
    made = {}
    if wanted:
        fn = custom or custom_inputs_fn(definition)
        scalars = {n: spec.value for n, spec in workload.inputs.items() if spec.type == "scalar"}
        torch.manual_seed(seed)  # the entrypoint draws from torch's global generator, as in SOL-ExecBench
        entry = definition.extra.get("custom_inputs_entrypoint")
        try:
            made = fn({**axes, **scalars}, torch.device(device))
        except Exception as exc:
            raise RuntimeError(f"custom_inputs_entrypoint {entry!r} raised {type(exc).__name__}: {exc}") from exc
        missing = [n for n in wanted if not isinstance(made, dict) or n not in made]
        if missing:
            raise RuntimeError(f"custom_inputs_entrypoint {entry!r} did not make custom input"
                               f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for name, spec in workload.inputs.items():
        if spec.type == "scalar":
            named[name] = spec.value
        elif spec.type == "safetensors":
            path = (root / spec.path).resolve()
            if not path.is_relative_to(root.resolve()):
                raise TraceFormatError(str(root), f"workload {workload.uuid}: inputs.{name}.path", "outside the dataset")
            if path not in cache:
                cache[path] = load_file(str(path))
            named[name] = cache[path][spec.tensor_key].to(device)
        elif spec.type == "random":
            ts = definition.inputs[name]
            shape = [axes[a] for a in ts.shape or []]
            dt = torch_dtype(ts.dtype)
            x = torch.randn(shape, generator=g, dtype=torch.float32)
            named[name] = x.to(dt).to(device) if dt.is_floating_point else x.abs().mul(4).to(dt).to(device)
            if family is not None:
                named[name] = family.random_input(definition, name, named[name])
        else:  # custom
            value = made[name]
            named[name] = value.to(device) if hasattr(value, "to") else value
    return named


# ------------------------------------------------------------------------------------------------ judging

def flashinfer_rule(actual, expected, atol=FIB_ATOL, rtol=FIB_RTOL, matched_ratio=1.0) -> dict:
    """flashinfer-bench's verdict on one output (``compute_error_stats`` and its non-finite check)."""
    import torch

    a = torch.as_tensor(actual).detach().cpu().to(torch.float64)
    e = torch.as_tensor(expected).detach().cpu().to(torch.float64)
    if tuple(a.shape) != tuple(e.shape):
        return {"passed": False, "why": "shape"}
    if not bool(torch.isfinite(a).all()):
        return {"passed": False, "why": "non-finite output (their evaluator fails any inf or NaN)",
                "max_absolute_error": float("nan")}
    err = (a - e).abs()
    rel = err / (e.abs() + 1e-8)
    exceeds = (err > atol) & (rel > rtol)
    ratio = 1.0 - float(exceeds.sum()) / max(err.numel(), 1)
    finite = torch.isfinite(err)
    return {"passed": ratio >= matched_ratio and bool(finite.all()), "matched_ratio": ratio,
            "max_absolute_error": float(err[finite].max()) if bool(finite.any()) else float("nan"),
            "max_relative_error": float(rel[finite].max()) if bool(finite.any()) else float("nan")}


def evaluate(spec, family, definition, impl, inputs, snapshot=None, drawn=None) -> tuple[str, str, dict]:
    """``(status, log, correctness)`` of one workload, judged as ``servekernels check`` judges a case: the call
    guarded (inputs unchanged, no introspection), the reference computed after it, outputs vetted (plain,
    dense, owning their storage), shape and dtype, then the values; if they pass, the same call again on the same
    storage refilled with fresh values (a cache answers stale). A broken integrity rule is INCORRECT_SHAPE or
    INCORRECT_DTYPE where it is one, else INCORRECT_NUMERICAL naming the rule.

    ``drawn`` ((shape, seed): the inputs are that drawn shape, ``OpSpec.draw``): a value failure names the defence
    "drawn shape", and once both calls pass, the measured path's loop (``perf.harness.guarded_measure`` on a
    ``RecordingDevice``: warmup, then timed calls alternating a set of new values and its fresh copy, the output of an iteration
    drawn from ``os.urandom`` and of the last judged) runs on the same shape: its breach is "re-check inside the
    timed loop" or "re-check after timing"."""
    from kernels.testing.integrity import Breach, fresh_values, guard

    guarded = guard(no_inplace_writes(impl, spec), spec)
    try:
        if family.draws:  # a sampler owning its RNG: the family's statistical judge, no per-element comparison
            status, log, corr = family.evaluate(spec, definition, guarded, inputs)
            if status != "PASSED" and drawn is not None:
                log = f"drawn shape (seed {drawn[1]}: {_shape_line(drawn[0])}):\n{log}"
                _name_defence(corr, "drawn shape")
            if snapshot is not None:
                snapshot.check(definition.name)
            return status, log, corr
        status, log, corr, kept = _one_call(spec, family, definition, guarded, inputs, None)
        if status == "PASSED":
            what = fresh_values(inputs)
            status, log, corr, _ = _one_call(spec, family, definition, guarded, inputs, kept)
            if status != "PASSED":
                log = f"fresh values (the same call again with {what}):\n{log}"
                _name_defence(corr, "fresh values")
        elif drawn is not None:
            log = f"drawn shape (seed {drawn[1]}: {_shape_line(drawn[0])}):\n{log}"
            _name_defence(corr, "drawn shape")
        if status == "PASSED" and drawn is not None:
            from perf.harness import RecordingDevice, TimingPolicy, guarded_measure

            from kernels.testing.integrity import case_seed

            # new values (not the judged calls' seed): an answer kept from those calls is stale on both sets
            guarded_measure(spec, impl, drawn[0], case_seed(drawn[1], f"{spec.name}/drawn, timed"),
                            TimingPolicy(warmup=3, reps=20), device=RecordingDevice())
        if snapshot is not None:
            snapshot.check(definition.name)
    except Breach as exc:
        detail = f"integrity: {exc}" if str(exc).startswith(exc.defence) else f"integrity: {exc.defence}: {exc}"
        if exc.defence == "output dtype/shape/device" and "dtype" in str(exc):
            return "INCORRECT_DTYPE", detail, None
        if exc.defence == "output dtype/shape/device" and "shape" in str(exc):
            return "INCORRECT_SHAPE", detail, None
        nan = float("nan")
        return "INCORRECT_NUMERICAL", detail, {"max_relative_error": nan, "max_absolute_error": nan,
                                               "extra": {"servekernels": {"passed": False, "defence": exc.defence,
                                                                          "detail": str(exc)}}}
    return status, log, corr


def _version(t):
    try:
        return t._version
    except (AttributeError, RuntimeError):  # an inference-mode tensor keeps no version counter
        return None


def no_inplace_writes(impl, spec):
    """``impl`` with one more input rule beside the guard's digest: no in-place torch op on an input tensor
    (the arguments the op writes, ``spec.writes``, excepted). The digest sees a write that changes bytes; the
    version counter torch bumps on every in-place op (shared by a tensor's views) sees the rest, whatever the
    values and the size: ``seq_lens.clamp_(max=512)`` on lengths all under 512 is a write into the judge's input
    that no workload under the cap would show. Raises ``Breach("inputs unchanged")``."""
    from kernels.testing.integrity import Breach, _arg_names, _written_names, tensors

    skip = tuple(spec.writes or ())
    skip_names = _written_names(spec, skip)

    def call(*args, **kwargs):
        watched = [p for i, a in enumerate(args) if i not in skip for p in tensors(a, f"args[{i}]")]
        watched += tensors({k: v for k, v in kwargs.items() if k not in skip_names}, "kwargs")
        before = [_version(t) for _, t in watched]
        result = impl(*args, **kwargs)
        changed = [p for (p, t), v in zip(watched, before) if v is not None and _version(t) != v]
        if changed:
            raise Breach("inputs unchanged", f"{spec.name} wrote into its input{'s' if len(changed) > 1 else ''} "
                         f"{', '.join(_arg_names(spec, changed))} (an in-place op: torch's version counter moved, "
                         "whether or not the values changed)")
        return result

    return call


def _name_defence(corr, defence: str) -> None:
    if corr is not None:
        corr["extra"]["servekernels"]["defence"] = defence


def _shape_line(shape: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def _one_call(spec, family, definition, guarded, inputs, earlier):
    import numpy as np
    import torch

    from kernels.ops import NotProvided
    from kernels.testing.integrity import vet_outputs
    from kernels.testing.judge import expected_outputs, judge

    actual = spec.call(guarded, inputs)
    expected = expected_outputs(spec, inputs)  # after the call: nothing of it exists while the call runs
    want = spec.out_dtypes(inputs) if spec.out_dtypes else {}
    for o in spec.outputs:
        a = actual[o]
        if isinstance(a, NotProvided):
            continue
        e_shape = tuple(np.shape(expected[o]))
        if tuple(a.shape) != e_shape:
            return "INCORRECT_SHAPE", f"{o}: shape {tuple(a.shape)}, expected {e_shape}", None, []
        if o in (want or {}) and a.dtype != want[o]:
            return "INCORRECT_DTYPE", f"{o}: dtype {a.dtype}, expected {want[o]}", None, []
    vet_outputs(spec, inputs, actual, expected, earlier)
    verdicts = judge(spec, guarded, inputs, expected=expected, actual=actual)
    ok = all(v.ok for v in verdicts)
    finite = [v for v in verdicts if not math.isnan(v.max_abs_err)]
    provided = [o for o in spec.outputs if not isinstance(actual[o], NotProvided)]
    theirs_a = family.theirs(definition, {o: actual[o] for o in provided})
    # an expected output is float64 numpy or, for an output written in place (an updated residual, rotated q),
    # a torch tensor in its stored dtype (bfloat16 has no numpy twin)
    theirs_e = family.theirs(definition, {o: (expected[o].detach().cpu().double() if torch.is_tensor(expected[o])
                                              else torch.as_tensor(np.asarray(expected[o], dtype=np.float64)))
                                          for o in provided})
    ratio = 0.95 if definition.op_type == "moe" else 1.0
    rule = {n: flashinfer_rule(theirs_a[n], theirs_e[n], matched_ratio=ratio) for n in theirs_a}
    fib_ok = all(r["passed"] for r in rule.values())
    lines = []
    for v in verdicts:
        if not v.ok:
            lines.append(v.detail)
            if v.diagnosis:
                lines.append(v.diagnosis)
    extra = {
        "servekernels": {
            "passed": ok,
            "verdicts": [{"output": v.output, "ok": v.ok, "worst_abs_err": v.max_abs_err, "tolerance_there": v.atol,
                          "margin": (v.atol - v.max_abs_err) if not math.isnan(v.max_abs_err) else None,
                          "status": v.status, "summary": v.summary, "detail": v.detail} for v in verdicts],
            "rule": "per-element tolerance derived from the roundings the contract allows, against the float64 "
                    "reference",
            "integrity": "guarded call, outputs vetted, the same call again on fresh values",
        },
        "flashinfer_bench_rule": {"passed": fib_ok, "atol": FIB_ATOL, "rtol": FIB_RTOL,
                                  "required_matched_ratio": ratio, "outputs": rule},
        "rules_disagree": ok != fib_ok,
    }
    correctness = {"max_relative_error": max((v.max_rel_err for v in finite if not math.isnan(v.max_rel_err)),
                                             default=0.0),
                   "max_absolute_error": max((v.max_abs_err for v in finite), default=0.0), "extra": extra}
    kept = [t for t in actual.values() if hasattr(t, "data_ptr")]
    return ("PASSED" if ok else "INCORRECT_NUMERICAL"), "\n".join(lines), correctness, kept


def environment() -> dict:
    import torch

    hw = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)"
    return {"hardware": hw, "libs": {"torch": torch.__version__, "servekernels": "0.1.0"}}


def make_trace(definition, workload, solution_name, status, log, correctness) -> Trace:
    perf = None
    if status == "PASSED":
        perf = {"latency_ms": 0.0, "reference_latency_ms": 0.0, "speedup_factor": 0.0}
        correctness = dict(correctness)
        correctness["extra"] = dict(correctness["extra"], performance="not measured (correctness only)")
    if status not in ("PASSED", "INCORRECT_NUMERICAL"):
        correctness = None  # flashinfer-bench allows correctness only with these two statuses
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return Trace(definition.name, workload, solution_name,
                 Evaluation(status, environment(), stamp, log, correctness, perf))


# ---------------------------------------------------------------------------------------------- the jobs

@dataclass
class Task:
    """One (solution, workload) to judge; ``ours`` names our case ((op, case name)) or None for theirs."""

    definition: str
    solution: str
    workload: Workload
    ours: tuple | None = None
    drawn: tuple | None = None  # (shape, seed): our drawn-shape workload (``OpSpec.draw``)


def tasks_for(ds: Dataset, log=print, seed: int | None = None) -> tuple[list[Task], list[str]]:
    """Every task of the dataset, and the lines of what is not judged (with why). ``seed``: the run seed of the
    drawn-shape workload each Definition of a registry op with ``OpSpec.draw`` gets (``drawn_shape``); None:
    none drawn."""
    from kernels.ops import registry
    from servekernels.trace.export import workload_uuid
    from servekernels.trace.families import family_for_definition

    tasks, notes = [], []
    for name, d in ds.definitions.items():
        fam, why = family_for_definition(d)
        sols = ds.solutions.get(name, [])
        if fam is None:
            notes.append(f"not judged: {name}: {why}")
            continue
        if not sols:
            notes.append(f"no solution: {name}")
            continue
        spec = registry()[fam.op]
        ours = {}
        for case, shape in spec.check.items():
            try:
                inputs = spec.build(shape, "cpu", 0)
                d2 = fam.definition_for(spec, case, inputs, _expected_shapes(spec, inputs))
            except Exception:
                continue
            if d2 is not None and d2.name == name and _same_dtypes(d2, d):
                ours[workload_uuid(name, fam.op, case)] = (fam.op, case)
        theirs = {w.uuid: w for w in ds.workloads.get(name, [])}
        drawn = None
        if seed is not None and spec.draw is not None and ours:
            shape, fitted = drawn_shape(spec, fam, d, ours, seed)
            uid = workload_uuid(name, fam.op, f"{fam.op}/drawn")  # one per run: a resumed run does not redraw
            drawn = (uid, shape, fitted)
        for s in sols:
            if s.language in GPU_LANGUAGES:
                notes.append(f"not judged: {s.name} ({s.language}): needs a GPU build, judged on a GPU")
                continue
            for uid, w in theirs.items():
                tasks.append(Task(name, s.name, w, ours.get(uid)))
            for uid, oc in ours.items():
                if uid not in theirs:
                    tasks.append(Task(name, s.name, Workload({}, {}, uid, {"description": f"servekernels {oc[0]} "
                                                                                            f"check case {oc[1]}"}), oc))
            if drawn is not None:
                uid, shape, fitted = drawn
                how = ("fitted to the definition's constant axes" if fitted else
                       "the definition fixes dimensions the draw varies: judged in the contract's terms, as check does")
                tasks.append(Task(name, s.name, Workload({}, {}, uid, {"description": (
                    f"servekernels {fam.op} drawn shape, seed {seed} ({how})")}), (fam.op, f"{fam.op}/drawn"),
                    (shape, seed)))
    return tasks, notes


def _same_dtypes(a, b) -> bool:
    """Two Definitions with the same inputs in the same dtypes and the same dtype for each output both have (a
    name need not say the dtype: flashinfer-bench's ``gemm_n{N}_k{K}`` is float16 or bfloat16; an output only one
    has, such as fused_add_rmsnorm's ``updated_residual``, is a form the adapter maps)."""
    if {n: t.dtype for n, t in a.inputs.items()} != {n: t.dtype for n, t in b.inputs.items()}:
        return False
    return all(a.outputs[n].dtype == b.outputs[n].dtype for n in set(a.outputs) & set(b.outputs))


def drawn_shape(spec, fam, definition, ours: dict, seed: int) -> tuple[dict, bool]:
    """``(shape, fitted)``: the op's shape drawn from the run seed (``servekernels.check.drawn_cases``), its
    constants replaced by those of the Definition's first check case where that makes it the same Definition
    (same name, const axes, input and output dtypes: every differing scalar replaced, then each put back while
    the Definition still matches); ``fitted`` False
    when no replacement fits (a Definition with every dimension const, ``sk_*``): the drawn shape as drawn."""
    from servekernels.check import drawn_cases

    case = next(iter(ours.values()))[1]
    base = spec.check[case]
    drawn = fam.fit_draw(drawn_cases([spec], seed)[0][2], base)  # the family's layout (one sequence, ...)

    def fits(shape) -> bool:
        try:
            inputs = spec.build(shape, "cpu", 0)
            d2 = fam.definition_for(spec, case, inputs, _expected_shapes(spec, inputs))
        except Exception:
            return False
        return (d2 is not None and d2.name == definition.name and d2.const_axes() == definition.const_axes()
                and _same_dtypes(d2, definition))

    if fits(drawn):
        return drawn, True
    keys = [k for k, v in base.items() if not isinstance(v, (list, tuple)) and (k not in drawn or drawn[k] != v)]
    shape = {**drawn, **{k: base[k] for k in keys}}
    if not fits(shape):
        return drawn, False
    for k in keys:  # put back what the draw chose wherever the Definition still matches
        trial = {**shape, k: drawn[k]} if k in drawn else {j: v for j, v in shape.items() if j != k}
        if fits(trial):
            shape = trial
    return shape, True


def _expected_shapes(spec, inputs):
    from kernels.testing.judge import expected_outputs

    return expected_outputs(spec, inputs)


def run_task(root: Path, ds: Dataset, task: Task) -> Trace:
    """Judge one task in this process (the executor isolates it)."""
    from kernels.ops import registry
    from servekernels.trace.families import family_for_definition

    d = ds.definitions[task.definition]
    sol = next(s for s in ds.solutions[task.definition] if s.name == task.solution)
    fam, _ = family_for_definition(d)
    spec = registry()[fam.op]
    from kernels.testing.integrity import JudgeSnapshot

    custom = None
    if task.ours is None and any(s.type == "custom" for s in task.workload.inputs.values()):
        try:  # the Definition's reference module, run before the snapshot: its own code is no breach
            custom = custom_inputs_fn(d)
        except Exception as exc:
            return make_trace(d, task.workload, sol.name, "RUNTIME_ERROR",
                              f"custom_inputs_entrypoint: {type(exc).__name__}: {exc}", None)
    snapshot = JudgeSnapshot()  # before the Solution is imported: what it replaces is a breach
    try:
        fn = build(sol)
    except BuildError as exc:
        return make_trace(d, task.workload, sol.name, "COMPILE_ERROR", str(exc), None)
    solve = solver(d, fn, sol.destination_passing_style)
    impl = fam.implementation(d, solve)
    try:
        if task.drawn is not None:
            inputs = spec.build(task.drawn[0], "cpu", task.drawn[1])
        elif task.ours is not None:
            inputs = spec.build(spec.check[task.ours[1]], "cpu", 0)
        else:
            inputs = fam.inputs_from(d, load_workload(root, d, task.workload, family=fam, custom=custom))
        status, log, corr = evaluate(spec, fam, d, impl, inputs, snapshot, task.drawn)
    except Exception as exc:
        status, log, corr = "RUNTIME_ERROR", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}", None
    if task.ours is not None and corr is not None:
        corr["extra"]["servekernels"]["workload"] = (f"servekernels {task.ours[0]} check case {task.ours[1]}"
                                                     if task.drawn is None else
                                                     f"servekernels {task.ours[0]} drawn shape, seed {task.drawn[1]}")
    return make_trace(d, task.workload, sol.name, status, log, corr)


def trace_path(root: Path, definition) -> Path:
    return root / "traces" / definition.op_type / f"{definition.name}.jsonl"


def done_pairs(path: Path) -> set:
    """The (solution, workload uuid) pairs a trace file already holds; a torn last line is ignored."""
    out = set()
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
            out.add((obj["solution"], obj["workload"]["uuid"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def append_trace(path: Path, trace: Trace) -> None:
    """One line, one ``write`` on an O_APPEND descriptor: whole or (after a crash mid-write) a torn last line
    that ``done_pairs`` ignores and the resumed run writes again. The strict core fields, plus the Trace's own
    top-level ``extra`` (the run seed under ``servekernels``: flashinfer-bench's models ignore unknown keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_finite({**trace.to_json(strict=True), **trace.extra})) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
