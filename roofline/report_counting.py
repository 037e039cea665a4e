"""The report's counting: traffic, programs and parity of one (case, implementation) under the Triton
interpreter (an eager torch implementation: its aten ops under a torch dispatch mode, ``roofline.torch_counting``),
at the scaled-down shape and, for this project's kernels, at (nearly) full size on stride-0 inputs; in a subprocess
on a GPU box (the parent runs CUDA)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

from kernels.impls import Provider, load
from kernels.ops import Case, NotProvidedError, Unsupported, get, registry
from roofline import ops
from roofline.attribution import by_argument, by_launch
from roofline.catalogue import case_cost, json_shape
from roofline.compile_metrics import cases_compile_metrics
from roofline.counting import (CountingUnavailable, count_traffic, interpreter_problem, launches_only,
                               zero_filled_allocations)
from roofline.lazy_inputs import lazy_inputs as _lazy_inputs
from roofline.specs import GpuSpec

TRITON_COUNTED_BY = "triton interpreter (loads and stores of every launch)"
TORCH_COUNTED_BY = "torch dispatch (eager aten ops)"  # roofline.torch_counting.COUNTED_BY


def count_case(case: Case, gpu: GpuSpec | None = None, provider: Provider | None = None, seed: int = 0) -> dict:
    """Counted traffic, programs and parity of one case at its small shape, under the interpreter, for
    implementation ``provider`` (default ours; any Triton implementation is counted: its launches go through the same
    interpreter hooks; one that is not Triton but eager torch is counted op by op, ``counted_by`` says which, and
    not at all when its ops move less than the op's minimum: its work ran outside torch). ``gpu``: the modeled
    GPU, for our launch plans that depend on it (``OpSpec.plan``: KV splits, split-K). Counting that fails (a Triton it cannot patch, a hook error) sets ``counting`` to "not counted:
    <reason>" and leaves the parity check, which then runs the kernel uncounted, to decide ``parity``. Parity is
    ``kernels.testing.judge``: the parity suite's per-element tolerances."""
    out: dict = {"counted_shape": json_shape(case.op, case.small)}
    t0 = time.perf_counter()
    provider = provider or load("servekernels")
    prep = ops.prepare(case.op, case.small, "cpu", seed=seed, provider=provider)  # the run seed (report --seed)
    plan = _plan_kwargs(case, gpu) if provider.internal else {}
    fn = prep.fn

    def planned(*args, **kwargs):
        return fn(*args, **kwargs, **plan)

    def run():
        return prep.spec.call(planned, prep.inputs)

    eager = not provider.triton  # counted op by op under a torch dispatch mode
    try:
        if provider.triton:
            result, counter, why = _run_counted(run)
            if counter is not None and not counter.launches and provider.eager_torch:
                eager = True
                # it says Triton but launched no Triton kernel (a plain torch module that did not declare
                # SERVEKERNELS_TRITON = False): count its aten ops instead, as for any eager implementation
                result, counter, why = _run_torch_counted(run)
        elif provider.eager_torch:
            result, counter, why = _run_torch_counted(run)
        else:
            result, counter, why = run(), None, f"{provider.name} is neither Triton nor eager torch: nothing counts it"
    except Unsupported as exc:
        return {**out, "parity": "unsupported", "status": f"unsupported: {exc}"}
    out["count_seconds"] = round(time.perf_counter() - t0, 2)
    small_cost = case_cost(case.op, case.small)
    if not why and eager and counter.total_bytes < small_cost.bytes_min:
        why = (f"its aten ops moved {counter.total_bytes} bytes, below the op's minimum {small_cost.bytes_min}: its "
               "work runs outside torch (numpy, an extension), where no dispatch mode sees it")
    if why:
        out["counting"] = f"not counted: {why}"
    else:
        out.update(counted_by=TORCH_COUNTED_BY if eager else TRITON_COUNTED_BY,
                   bytes_counted_small=counter.total_bytes, bytes_min_small=small_cost.bytes_min,
                   programs_small=counter.programs, launches_small=len(counter.launches),
                   kernels=counter.kernels(), traffic_by_argument_small=by_argument(counter),
                   bytes_by_launch_small=by_launch(counter))
        if prep.spec.fa2_bytes:
            out["fa2_bytes_small"] = prep.spec.fa2_bytes(case.small)
    ok, rel, detail = prep.check(result, prep.expected())
    out.update(parity="pass" if ok else "FAIL", max_rel_err=rel, parity_detail=detail[:2000])
    deviation = provider.deviation_for(case.name)
    if deviation:  # a strict expected failure, as in check and pytest: an unexpected pass is a FAIL
        out.update(parity="known deviation" if not ok else "FAIL",
                   parity_detail=(f"known deviation: {deviation}" if not ok else
                                  f"expected to deviate ({deviation}) and passed: the deviation is fixed"))
    if case.op in FULL_SIZE_OPS and case.full_count and not why and provider.internal:
        try:
            out.update(count_full(case, gpu=gpu))
        except Exception as exc:  # counting is not parity: a failure here only loses the full-size count
            out["counting"] = f"not counted at full size: {type(exc).__name__}: {str(exc)[:300]}"
    return out


def _run_counted(run, **count_kwargs):
    """``(result, counter, None)`` from ``run()`` under ``count_traffic``, or ``(result, None, reason)`` when
    counting fails: the kernel then runs again uncounted, so only an error of the kernel itself propagates."""
    try:
        with count_traffic(**count_kwargs) as counter:
            result = run()
    except CountingUnavailable as exc:
        return run(), None, str(exc)
    except Exception as exc:
        why = f"{type(exc).__name__} while counting: {str(exc)[:300]}"
        return run(), None, why  # raises again if the kernel itself is broken
    return result, (None if counter.failure else counter), counter.failure


def _run_torch_counted(run):
    """``(result, counter, None)`` from ``run()`` under ``count_torch`` (every aten op one launch), or
    ``(result, None, reason)`` when an op could not be read (the kernel still ran to the end)."""
    from roofline.torch_counting import count_torch  # deferred: the report's modules load without torch

    with count_torch() as counter:
        result = run()
    return result, (None if counter.failure else counter), counter.failure


def _plan_kwargs(case: Case, gpu: GpuSpec | None) -> dict:
    """Launcher keywords that make the launch plan the modeled GPU's (``OpSpec.plan``; {} without a GPU)."""
    plan = registry()[case.op].plan
    return plan(gpu) if gpu is not None and plan is not None else {}



# ops counted again at (nearly) full size on stride-0 inputs, running a stratified sample of each launch's programs
FULL_SIZE_OPS = tuple(name for name, spec in registry().items() if spec.full_size_count)
FULL_SAMPLES = 16
# per-program work is capped where the op spec says so (``OpSpec.medium_shape``: decode's contexts at
# DECODE_CTX_CAP, a GEMM's K at GEMM_K_CAP). Prefill is not capped: its traffic is K/V re-read per query tile, and
# a capped chunk has fewer (often partial) tiles than the full one, so no ratio carries over (scaling both
# lengths to 384 counted the 512-token chunk at 8k 3.4x low). Its programs run at full length, sampled as every
# larger launch is.
SPLIT_K_QUANTUM = 128  # a split GEMM's capped K: a multiple of splits x this, so its K slices are equal


def medium_shape(case: Case) -> tuple[dict, bool]:
    """The case's shape with per-program work capped (its op spec's ``medium_shape``); (shape, capped?)."""
    capped = get(case.op).medium_shape(case.shape)
    return (dict(case.shape), False) if capped is None else (capped, True)


def full_programs(case: Case, gpu: GpuSpec | None = None) -> int:
    """Programs the kernel launches at the real full shape (grids only: nothing executes)."""
    args, kwargs = _lazy_inputs(case)
    with launches_only() as counter:
        ops.kernel(case.op)(*args, **kwargs, **_plan_kwargs(case, gpu))
    return counter.programs


def full_split_k(case: Case, gpu: GpuSpec | None = None) -> int:
    """The K slices a grouped GEMM's launch plan picks at the case's real full shape (its grid's third axis;
    nothing executes)."""
    args, kwargs = _lazy_inputs(case)
    with launches_only() as counter:
        ops.kernel(case.op)(*args, **kwargs, **_plan_kwargs(case, gpu))
    return max(launch.grid[2] for launch in counter.launches if "gemm" in launch.kernel)


def count_full(case: Case, samples: int = FULL_SAMPLES, gpu: GpuSpec | None = None) -> dict:
    """Traffic at the case's full shape, per-program work capped (``medium_shape``): every grid is the real one
    (batch, heads, N tiles, experts and rows as at full size); launches with more than ``samples`` programs run
    a stratified sample (``count_traffic(max_programs=...)``, an unbiased estimate). Capped lengths are scaled
    back: decode by the counted/minimum ratio (per-program overheads only shrink with length, so this is
    conservative), GEMMs launch by launch along K; prefill runs uncapped."""
    shape, capped = medium_shape(case)
    by_k = capped and get(case.op).capped_scaling == "k_by_launch"
    fn = ops.kernel(case.op)
    t0 = time.perf_counter()
    plan = _plan_kwargs(case, gpu)
    if by_k:
        splits = full_split_k(case, gpu)  # the full K's split plan, at the capped K
        plan = dict(plan, split_k=splits)
        if splits > 1:  # equal slices, as at full size (every catalogue K unit divides SPLIT_K_QUANTUM)
            step = splits * SPLIT_K_QUANTUM
            shape["k"] = min(case.shape["k"], -(-shape["k"] // step) * step)
    with zero_filled_allocations():
        args, kwargs = _lazy_inputs(Case(case.op, case.name, shape, case.small), stride0=False)
        with count_traffic(max_programs=samples, seed=0) as counter:
            fn(*args, **kwargs, **plan)
    if counter.failure:
        raise CountingUnavailable(counter.failure)
    counted = counter.total_bytes
    if by_k:
        # A, weights and scales grow with K (both K multiples of the scale group); the stores (y, or the split
        # partials) and the split reduction's loads do not
        fixed = [launch.store_bytes + (launch.load_bytes if "sum_splits" in launch.kernel else 0)
                 for launch in counter.launches]
        by_launch_full = [[name, f + (b - f) * case.shape["k"] / shape["k"]]
                          for (name, b), f in zip(by_launch(counter), fixed)]
        full = sum(b for _, b in by_launch_full)
    elif capped:
        full = counted / case_cost(case.op, shape).bytes_min * case_cost(case.op, case.shape).bytes_min
    else:
        full = counted
    out = {"bytes_by_launch_full": by_launch_full} if by_k else {}
    return {**out, "bytes_counted_full": full, "bytes_counted_medium": counted, "programs_medium": counter.programs,
            "programs_run_full": sum(launch.executed for launch in counter.launches),
            "programs_full": counter.programs if not capped else full_programs(case, gpu),
            "bytes_by_launch_medium": by_launch(counter),
            "medium_shape": json_shape(case.op, shape) if capped else None,
            "count_full_seconds": round(time.perf_counter() - t0, 2)}


def count_cases(cases: list[Case], progress=None, spec: GpuSpec | None = None,
                provider: Provider | None = None, seed: int = 0) -> dict[str, dict]:
    """``{case name: counted fields}`` for ``provider`` (default ours) on every case (interpreter only); with ``spec``, launch plans
    are that GPU's and, for servekernels, each case also gets its compile metrics (``"compile"``)."""
    results: dict[str, dict] = {}
    broken = interpreter_problem()  # neither counting nor the scaled-down parity check can run here
    provider = provider or load("servekernels")
    impl = provider.name
    for case in cases:
        if not provider.provides(case.op):
            results[case.name] = {"status": f"{impl}: {case.op} not provided", "parity": "not provided"}
        elif broken and provider.triton:  # an eager torch implementation is counted without the interpreter
            results[case.name] = {"counting": f"not counted: {broken}"}
        else:
            try:
                results[case.name] = count_case(case, spec, provider, seed)
            except (NotProvidedError, ImportError) as exc:  # e.g. vLLM that cannot load here
                results[case.name] = {"status": f"{impl}: cannot run: {exc}"[:500], "parity": "FAIL"}
            except Exception as exc:  # a kernel that crashes is a finding: record it, keep going
                results[case.name] = {"status": f"error: {type(exc).__name__}: {str(exc)[:500]}",
                                      "parity": "FAIL"}
        if progress:
            progress.step(f"counted {case.name} ({impl})")
    if spec is not None and provider.internal:
        for name, compiled in compile_cases(cases, spec).items():
            results.setdefault(name, {})["compile"] = compiled
    return results


def compile_cases(cases: list[Case], spec: GpuSpec) -> dict[str, dict]:
    """Compile metrics (``roofline.compile_metrics``) of this project's kernels for every case."""
    return cases_compile_metrics(cases, spec)


def _count_in_subprocess(cases: list[Case], progress, spec: GpuSpec, provider: Provider,
                         seed: int = 0) -> dict[str, dict]:
    """On a GPU box: run the counting under the interpreter in a child process (the parent runs CUDA); the
    child resolves ``provider.name`` again (its own door: ``--count-impl``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, cases_path = os.path.join(tmp, "counted.json"), os.path.join(tmp, "cases.json")
        with open(cases_path, "w") as f:  # the cases themselves, not names: any catalogue (a test's too) counts
            json.dump([asdict(c) for c in cases], f)
        cmd = [sys.executable, "-m", "servekernels", "report", "--count-worker", path, "--count-cases", cases_path,
               "--gpu", spec.slug, "--count-impl", provider.name, "--seed", str(seed)]
        env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
        for c in cases:
            progress.step(f"counted {c.name}")
        if proc.returncode != 0 or not os.path.exists(path):
            return {c.name: {"counting": f"not counted: the counting subprocess failed (exit {proc.returncode})"}
                    for c in cases}
        with open(path) as f:
            return json.load(f)
