"""Where ``trace judge`` runs its tasks: each (solution, workload) in a process of its own.

``local`` (the default): a pool of forked processes, ``workers`` at a time; a task that crashes its process
(a segfault, ``os._exit``) becomes a RUNTIME_ERROR trace, one that runs past ``timeout`` seconds is killed and
becomes a TIMEOUT trace; the run goes on. ``ray[:ADDRESS]``: the same tasks as Ray remote functions on an
existing cluster (``ray.init(address=ADDRESS)``; ``max_retries`` re-runs a task whose worker died), Ray being an
optional extra that only this module imports, and only when asked for.
Results come back as ``(task, Trace)`` in completion order; the caller writes each one line.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
import traceback


def make_executor(spec: str, *, workers: int = 1, timeout: float = 120.0):
    kind, _, address = (spec or "local").partition(":")
    if kind == "local":
        return LocalExecutor(workers, timeout)
    if kind == "ray":
        return RayExecutor(address or None, timeout)
    from servekernels.usage import UsageError

    raise UsageError(f"--executor: expected local or ray[:ADDRESS], got {spec!r}")


def _failed(ds, task, status: str, log: str):
    from servekernels.trace.judge import make_trace

    return make_trace(ds.definitions[task.definition], task.workload, task.solution, status, log, None)


def _child(conn, root, ds, task):
    try:
        import torch

        torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang there)
        from servekernels.trace.judge import run_task

        trace = run_task(root, ds, task)
        conn.send_bytes(pickle.dumps(trace))
    except BaseException as exc:  # the task's own failure, reported, never the run's
        conn.send_bytes(pickle.dumps(_failed(ds, task, "RUNTIME_ERROR",
                                             f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")))
    finally:
        conn.close()


class LocalExecutor:
    def __init__(self, workers: int, timeout: float):
        self.workers, self.timeout = max(1, workers), timeout

    def run(self, root, ds, tasks):
        ctx = mp.get_context("fork")
        pending = list(tasks)
        running = []  # (task, process, conn, started)
        while pending or running:
            while pending and len(running) < self.workers:
                task = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_child, args=(child, root, ds, task), daemon=True)
                p.start()
                child.close()
                running.append((task, p, parent, time.monotonic()))
            still = []
            for task, p, conn, t0 in running:
                if conn.poll():
                    try:
                        trace = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        trace = _failed(ds, task, "RUNTIME_ERROR", f"the task's process died (exit code {p.exitcode})")
                    p.join(5)
                    yield task, trace
                elif not p.is_alive():
                    yield task, _failed(ds, task, "RUNTIME_ERROR", f"the task's process died (exit code {p.exitcode})")
                elif time.monotonic() - t0 > self.timeout:
                    p.kill()
                    p.join(5)
                    yield task, _failed(ds, task, "TIMEOUT", f"no result within {self.timeout:g} s: killed")
                else:
                    still.append((task, p, conn, t0))
            running = still
            if running:
                time.sleep(0.02)


class RayExecutor:
    """One Ray task per (solution, workload); a task whose worker dies is retried by Ray (``max_retries``)."""

    def __init__(self, address, timeout: float):
        try:
            import ray  # the optional extra: imported only here, only when asked for
        except ImportError:
            from servekernels.usage import UsageError

            raise UsageError("--executor ray: Ray is not installed (pip install 'ray[default]')") from None
        self.ray, self.address, self.timeout = ray, address, timeout

    def run(self, root, ds, tasks):
        ray = self.ray
        if not ray.is_initialized():
            # the workers see this checkout and the Triton switch the driver runs under
            env = {k: os.environ[k] for k in ("PYTHONPATH", "TRITON_INTERPRET") if k in os.environ}
            ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": env})

        @ray.remote(max_retries=3, retry_exceptions=False)
        def judge_one(root, ds, task):
            from kernels.runtime import configure_triton
            from servekernels.trace.judge import run_task

            configure_triton()
            return run_task(root, ds, task)

        refs = {judge_one.remote(root, ds, t): (t, time.monotonic()) for t in tasks}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in ready:
                task, _ = refs.pop(ref)
                try:
                    yield task, ray.get(ref)
                except Exception as exc:
                    yield task, _failed(ds, task, "RUNTIME_ERROR", f"{type(exc).__name__}: {exc}")
            for ref, (task, t0) in list(refs.items()):
                if time.monotonic() - t0 > self.timeout:
                    ray.cancel(ref, force=True)
                    refs.pop(ref)
                    yield task, _failed(ds, task, "TIMEOUT", f"no result within {self.timeout:g} s: cancelled")


