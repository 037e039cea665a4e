"""Mutation testing: plant one bug from ``correctness/mutant_catalogue.py`` at a time and see whether tests catch it.

    python -m correctness.mutants                 # every non-equivalent mutant (see the README for the time)
    python -m correctness.mutants --list          # the catalogue: name, file, what it breaks
    python -m correctness.mutants --only NAME ... # these mutants (an equivalent one too, to watch it survive)
    python -m correctness.mutants --sample 3      # 3 mutants picked by the commit hash (CI: rotates per commit)

For each mutant the tool copies the working tree (``git ls-files``: tracked files and untracked ones git does
not ignore) into a scratch directory once, replaces the mutant's ``old`` snippet (which must occur exactly once)
by its ``new`` one there, checks that the mutated module still imports, and runs
``python -m pytest -x -q -p no:cacheprovider -m '' <the mutant's tests>`` (every tier) in the scratch copy with ``PYTHONPATH``
pointing at it and ``TRITON_INTERPRET`` set as ``kernels.runtime.configure_triton`` would set it. The real tree
is never written. A mutant is killed when pytest reports a failure, the test process crashes (a wild store
can abort the interpreter) or the run exceeds ``--timeout`` (a hang is caught too); it survives when its
tests pass, and is an error when its tests cannot run (no test selected, a usage error, or a mutated module
that no longer imports: a catalogue bug, not a kill).

Prints one row per mutant (name, file, result, the first failing test, seconds), then the kill rate over the
non-equivalent mutants run and the survivors. Exit status 0 when every one was killed, 1 when one survived,
2 on an error. Equivalent mutants (argued in the catalogue) are excluded by name and never counted.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from correctness.mutant_catalogue import CATALOGUE, Mutant
from kernels import runtime  # its functions are looked up at each call (tests patch them)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT = 300.0  # seconds per mutant; a longer run counts as killed ("timeout")


@dataclass
class Result:
    mutant: Mutant
    status: str  # "killed", "survived", "error"
    detail: str  # the first failing test, "timeout", or what went wrong
    seconds: float


def apply_mutant(text: str, m: Mutant) -> str:
    """``text`` with the mutant's ``old`` snippet replaced; ValueError unless ``old`` occurs exactly once."""
    n = text.count(m.old)
    if n != 1:
        raise ValueError(f"mutant {m.name}: its old snippet occurs {n} times in {m.file} (must be exactly once)")
    return text.replace(m.old, m.new)


def module_name(path: str) -> str:
    """``kernels/triton/ops/paged_prefill.py`` -> ``kernels.triton.ops.paged_prefill``."""
    p = Path(path).with_suffix("")
    parts = p.parts[:-1] if p.name == "__init__" else p.parts
    return ".".join(parts)


def tree_files(root: Path = ROOT) -> list[str]:
    """The files of the working tree as git sees them: tracked, plus untracked ones that are not ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (root / f).is_file()})


def make_scratch(root: Path = ROOT) -> Path:
    """A fresh temporary copy of the working tree (the caller removes it)."""
    dest = Path(tempfile.mkdtemp(prefix="servekernels-mutant-"))
    for f in tree_files(root):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)
    return dest


def child_env(scratch: Path) -> dict:
    """The environment of a mutant's subprocesses: only the scratch copy on the path, interpreter as conftest."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(scratch)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a same-size mutation within one second must not reuse a stale .pyc
    if "TRITON_INTERPRET" not in env:

        if not runtime.cuda_available():
            env["TRITON_INTERPRET"] = "1"
    return env


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def first_failure(output: str) -> str:
    """The first ``FAILED``/``ERROR`` node id of pytest's short summary (``-ra``), or a short fallback."""
    m = _FAILED.search(output)
    if m:
        return m.group(2)
    tail = [line for line in output.strip().splitlines() if line.strip()]
    return tail[-1][:100] if tail else "(no output)"


def run_mutant(m: Mutant, scratch: Path, *, timeout: float = DEFAULT_TIMEOUT, python: str = sys.executable) -> Result:
    """Apply ``m`` in ``scratch``, check the import, run its tests, restore the file. Never touches ROOT."""
    start = time.monotonic()
    path = scratch / m.file
    original = path.read_text()
    env = child_env(scratch)
    try:
        path.write_text(apply_mutant(original, m))
        imp = subprocess.run([python, "-c", f"import {module_name(m.file)}"], cwd=scratch, env=env,
                             capture_output=True, text=True, timeout=timeout)
        if imp.returncode != 0:
            err = (imp.stderr.strip().splitlines() or ["?"])[-1]
            return Result(m, "error", f"does not import: {err[:100]}", time.monotonic() - start)
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "", *m.tests]  # every tier
        try:
            run = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                                 timeout=max(timeout - (time.monotonic() - start), 1.0))
        except subprocess.TimeoutExpired:
            return Result(m, "killed", "timeout", time.monotonic() - start)
        out = run.stdout + run.stderr
        if run.returncode == 0:
            return Result(m, "survived", "-", time.monotonic() - start)
        if run.returncode < 0:  # the test process died (a wild store under the interpreter aborts it): a kill
            return Result(m, "killed", f"crashed (signal {-run.returncode})", time.monotonic() - start)
        if run.returncode == 1:
            return Result(m, "killed", first_failure(out), time.monotonic() - start)
        # 2 interrupted (a collection error: a test file that cannot import the mutated module counts as killed
        # only if pytest says so with an ERROR line), 3 internal error, 4 usage error, 5 no tests collected
        if run.returncode == 2 and _FAILED.search(out):
            return Result(m, "killed", first_failure(out), time.monotonic() - start)
        return Result(m, "error", f"pytest exit {run.returncode}: {first_failure(out)}", time.monotonic() - start)
    finally:
        path.write_text(original)


def sample(mutants: list[Mutant], n: int, seed: str) -> list[Mutant]:
    """``n`` non-equivalent, non-slow mutants chosen by ``seed`` (CI passes the commit hash: rotates per commit)."""
    pool = sorted((m for m in mutants if m.equivalent is None and not m.slow), key=lambda m: m.name)
    ranked = sorted(pool, key=lambda m: hashlib.sha256(f"{seed}:{m.name}".encode()).hexdigest())
    return sorted(ranked[:n], key=lambda m: mutants.index(m))


def commit_hash(root: Path = ROOT) -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else time.strftime("%Y-%m-%d")


def run_all(mutants: list[Mutant], *, jobs: int = 1, timeout: float = DEFAULT_TIMEOUT, root: Path = ROOT,
            progress=None) -> list[Result]:
    """Run ``mutants`` on ``jobs`` scratch copies (one per worker); results in catalogue order."""
    jobs = max(1, min(jobs, len(mutants) or 1))
    scratches = [make_scratch(root) for _ in range(jobs)]
    try:
        if jobs == 1:
            results = []
            for m in mutants:
                results.append(run_mutant(m, scratches[0], timeout=timeout))
                if progress:
                    progress(results[-1])
            return results
        free = list(scratches)

        lock = threading.Lock()

        def work(m):
            with lock:
                s = free.pop()
            try:
                r = run_mutant(m, s, timeout=timeout)
            finally:
                with lock:
                    free.append(s)
            if progress:
                progress(r)
            return r

        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(work, mutants))
    finally:
        for s in scratches:
            shutil.rmtree(s, ignore_errors=True)


def kill_rate(results: list[Result]) -> tuple[int, int]:
    """(killed, counted): every result counts except the equivalent mutants'."""
    counted = [r for r in results if r.mutant.equivalent is None]
    return sum(r.status == "killed" for r in counted), len(counted)


def format_row(r: Result) -> str:
    return f"{r.mutant.name:<34} {r.mutant.file:<32} {r.status:<9} {r.seconds:6.1f}s  {r.detail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m correctness.mutants", description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the catalogue and exit")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants (equivalent ones included)")
    ap.add_argument("--sample", type=int, metavar="N", help="run N mutants chosen by --seed (default: HEAD's hash)")
    ap.add_argument("--seed", help="seed of --sample (default: the commit hash, so CI rotates per commit)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant (default 300)")
    args = ap.parse_args(argv)

    by_name = {m.name: m for m in CATALOGUE}
    if args.list:
        for m in CATALOGUE:
            tag = " [equivalent]" if m.equivalent else (" [slow]" if m.slow else "")
            print(f"{m.name:<34} {m.file:<32} {m.description}{tag}")
            if m.equivalent:
                print(f"{'':<34} {'':<32} equivalent: {m.equivalent}")
        print(f"{len(CATALOGUE)} mutants, {sum(m.equivalent is not None for m in CATALOGUE)} argued equivalent")
        return 0
    if args.only:
        unknown = [n for n in args.only if n not in by_name]
        if unknown:
            ap.error(f"--only: unknown mutant(s) {', '.join(unknown)} (see --list)")
        chosen = [by_name[n] for n in args.only]
    elif args.sample is not None:
        if args.sample < 1:
            ap.error("--sample: must be >= 1")
        seed = args.seed or commit_hash()
        chosen = sample(CATALOGUE, args.sample, seed)
        print(f"sample of {len(chosen)} (seed {seed[:12]}): {', '.join(m.name for m in chosen)}")
    else:
        chosen = [m for m in CATALOGUE if m.equivalent is None]
        skipped = [m.name for m in CATALOGUE if m.equivalent is not None]
        if skipped:
            print(f"excluded as equivalent (argued in correctness/mutant_catalogue.py): {', '.join(skipped)}")

    print(f"{'mutant':<34} {'file':<32} {'result':<9} {'time':>7}  killed by", flush=True)
    t0 = time.monotonic()
    results = run_all(chosen, jobs=args.jobs, timeout=args.timeout,
                      progress=lambda r: print(format_row(r), flush=True))
    killed, counted = kill_rate(results)
    survivors = [r for r in results if r.status == "survived" and r.mutant.equivalent is None]
    errors = [r for r in results if r.status == "error"]
    rate = f"{100.0 * killed / counted:.1f} %" if counted else "n/a"
    print(f"\nkill rate: {killed}/{counted} non-equivalent mutants killed ({rate}) in {time.monotonic() - t0:.0f} s")
    for r in survivors:
        print(f"SURVIVED {r.mutant.name} ({r.mutant.file}): {r.mutant.description}")
    for r in errors:
        print(f"ERROR {r.mutant.name} ({r.mutant.file}): {r.detail}")
    if errors:
        return 2
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
