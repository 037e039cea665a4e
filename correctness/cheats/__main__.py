"""``python -m correctness.cheats``: every cheat of the corpus judged as ``servekernels check --impl`` judges it
(the timing-only ones then through the measured path's loop, ``perf.harness.timed_loop``, on a recording
device), one line each: the cheat, the defence that caught it, and the catch rate. Exit 1 if any got through.

Options: ``--seed N`` (default: fresh, as for any user's implementation), ``-k NAME`` (only cheats whose module
name contains NAME)."""
from __future__ import annotations

import argparse
import ast
import pkgutil
import random
import time

import correctness.cheats as package
from kernels.impls import load
from kernels.ops import registry
from kernels.runtime import configure_triton
from kernels.testing.integrity import Breach, JudgeSnapshot, run_seed
from perf.harness import RecordingDevice, TimingPolicy, guarded_measure
from servekernels.check import collect, run_case

configure_triton()  # before anything imports triton


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def caught_by(name: str) -> tuple[str, ...]:
    """The defences a cheat's ``CAUGHT_BY`` names, read from its source (importing a cheat may patch the judge)."""
    path = f"{package.__path__[0]}/{name}.py"
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CAUGHT_BY" for t in node.targets):
            value = ast.literal_eval(node.value)
            return value if isinstance(value, tuple) else (value,)
    raise ValueError(f"{path}: no CAUGHT_BY")


def judge_in_check(name: str, seed: int):
    """The first failing row of ``servekernels check --impl correctness.cheats.<name>``, or None."""
    snapshot = JudgeSnapshot()  # before the cheat is imported
    for case in collect(impls=[f"correctness.cheats.{name}"], seed=seed, snapshot=snapshot):
        for r in run_case(case, snapshot):
            if not r.ok:
                return r
    return None


def judge_timed(name: str, seed: int):
    """The measured path's loop (``perf.harness.timed_loop``, a recording device standing in for CUDA) on each
    op the cheat provides, at the op's drawn shape: the ``Breach`` it raised, or None."""
    provider = load(f"correctness.cheats.{name}")
    for op, spec in registry().items():
        if not provider.provides(op):
            continue
        shape = spec.draw(random.Random(f"{seed}/{op}")) if spec.draw else next(iter(spec.check.values()))
        try:
            guarded_measure(spec, provider.op(op), shape, seed, TimingPolicy(warmup=3, reps=20),
                            device=RecordingDevice())
        except Breach as exc:
            return exc
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m correctness.cheats", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("-k", dest="select", action="append", metavar="NAME")
    args = p.parse_args(argv)
    seed = run_seed(args.seed, ["correctness.cheats"])
    chosen = [n for n in names() if not args.select or any(s in n for s in args.select)]
    print(f"cheating implementations: {len(chosen)}, seed {seed} (replay: python -m correctness.cheats --seed {seed})")
    caught, missed = 0, []
    for name in chosen:
        started = time.perf_counter()
        row = judge_in_check(name, seed)
        where, defence, detail = "check", None, ""
        if row is not None:
            defence, detail = row.defence or "values", row.detail
        else:
            exc = judge_timed(name, seed)
            if exc is not None:
                where, defence, detail = "measured path", exc.defence, str(exc)
        expected = caught_by(name)
        mark = "caught" if defence else "MISSED"
        if defence:
            caught += 1
        else:
            missed.append(name)
        note = "" if defence is None or defence in expected else f" (its CAUGHT_BY says {' or '.join(expected)})"
        print(f"  {mark:<6} {name:<20} by {where + ': ' + defence if defence else 'nothing'}{note}  "
              f"[{time.perf_counter() - started:.1f}s]")
        if detail:
            print(f"         {detail.splitlines()[0][:150]}")
    rate = 100.0 * caught / max(len(chosen), 1)
    print(f"caught {caught} of {len(chosen)} ({rate:.0f} %)" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
