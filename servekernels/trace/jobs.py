"""``trace judge``'s run: the dataset's tasks, less those the trace files already hold, through an executor
(``executor``), each result appended as one line (``judge.append_trace``)."""
from __future__ import annotations

from pathlib import Path

from servekernels.trace.executor import make_executor
from servekernels.trace.judge import append_trace, done_pairs, load_dataset, tasks_for, trace_path


def judge_dataset(root, *, solutions_glob=None, definitions_glob=None, executor="local", timeout=120.0,
                  workers=1, log=print, seed=None) -> dict:
    """Judge everything under ``root``; returns counts by status and the notes. ``seed``: the run seed of the
    drawn-shape workloads (default fresh from ``os.urandom``, as ``check`` draws for a user's implementation;
    printed, and recorded in each Trace's ``servekernels.run_seed``, for a replay: ``trace judge --seed N``)."""
    from kernels.testing.integrity import draw_seed

    root = Path(root)
    ds = load_dataset(root, definitions_glob, solutions_glob)
    seed = draw_seed() if seed is None else int(seed)
    log(f"trace judge: run seed {seed} (the drawn shapes)")
    tasks, notes = tasks_for(ds, log, seed)
    for n in notes:
        log(n)
    todo = []
    for t in tasks:
        d = ds.definitions[t.definition]
        if (t.solution, t.workload.uuid) in done_pairs(trace_path(root, d)):
            continue
        todo.append(t)
    counts: dict[str, int] = {}
    ex = make_executor(executor, workers=workers, timeout=timeout)
    for task, trace in ex.run(root, ds, todo):
        d = ds.definitions[task.definition]
        # the run seed on every trace of the run (the drawn workload's inputs derive from it): a replay's key
        trace.extra["servekernels"] = {"run_seed": seed, "replay": f"servekernels trace judge DIR --seed {seed}"}
        append_trace(trace_path(root, d), trace)
        st = trace.evaluation.status
        counts[st] = counts.get(st, 0) + 1
        where = (f"ours: {task.ours[1]}" + (f", seed {task.drawn[1]}" if task.drawn else "")) if task.ours else f"theirs: {task.workload.uuid}"
        extra = ((trace.evaluation.correctness or {}).get("extra") or {})
        fib = extra.get("flashinfer_bench_rule", {}).get("passed")
        side = "" if fib is None else f"  (flashinfer-bench rule: {'pass' if fib else 'FAIL'})"
        first = trace.evaluation.log.splitlines()[0] if trace.evaluation.log else ""
        log(f"{st:20s} {task.solution} on {task.definition} [{where}]{side}" + (f"\n    {first}" if first else ""))
    skipped = len(tasks) - len(todo)
    log(f"trace judge: {len(todo)} judged, {skipped} already in the trace files, "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return {"counts": counts, "notes": notes, "judged": len(todo), "resumed": skipped}
