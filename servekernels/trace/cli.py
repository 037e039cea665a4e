"""``servekernels trace export DIR | judge DIR | coverage``: FlashInfer-Trace in and out (see
``servekernels.trace``). A malformed file is one line on stderr naming the file and the field, exit 2."""
from __future__ import annotations


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="trace_command", required=True, metavar="{export,judge,coverage}",
                         help="what to do")
    e = sub.add_parser("export", help="write Definitions and Workloads for every op and check case")
    e.add_argument("dir", help="the dataset directory to write (definitions/, workloads/, blob/)")
    e.add_argument("--op", action="append", default=None, help="only this op (repeatable)")
    j = sub.add_parser("judge", help="judge the Solutions under DIR with this suite's oracle; write Traces")
    j.add_argument("dir", help="a FlashInfer-Trace dataset directory")
    j.add_argument("--solutions", default=None, metavar="GLOB", help="only Solutions whose name or path matches")
    j.add_argument("--definitions", default=None, metavar="GLOB", help="only Definitions whose name matches")
    j.add_argument("--executor", default="local", help="local (a process per task, default) or ray[:ADDRESS]")
    j.add_argument("--workers", type=int, default=1, help="local executor: tasks at a time (default 1)")
    j.add_argument("--timeout", type=float, default=300.0, help="seconds per task before a TIMEOUT trace")
    j.add_argument("--seed", type=_seed, default=None, metavar="N",
                   help="the run seed of the drawn-shape workload each Definition gets (default: fresh from "
                        "os.urandom; printed and recorded in every Trace, so a run replays with --seed N)")
    sub.add_parser("coverage", help="which published definition families this suite judges, and the percentage")


def _seed(text: str) -> int:
    """``--seed``: a non-negative integer (argparse turns the ``ArgumentTypeError`` into one line, exit 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def run(args) -> int:
    from servekernels.trace.schema import TraceFormatError
    from servekernels.usage import UsageError

    try:
        if args.trace_command == "export":
            from servekernels.trace.export import export

            export(args.dir, ops=args.op)
            return 0
        if args.trace_command == "judge":
            from pathlib import Path

            from servekernels.trace.jobs import judge_dataset

            if not Path(args.dir).is_dir():
                raise UsageError(f"judge: {args.dir}: no such directory")
            out = judge_dataset(args.dir, solutions_glob=args.solutions, definitions_glob=args.definitions,
                                executor=args.executor, timeout=args.timeout, workers=args.workers,
                                seed=args.seed)
            bad = sum(v for k, v in out["counts"].items() if k != "PASSED")
            return 1 if bad else 0
        from servekernels.trace.coverage import report

        report()
        return 0
    except TraceFormatError as exc:
        raise UsageError(str(exc)) from None
