"""Worst kernel-vs-reference error per test file and dtype, from a ``SERVEKERNELS_ERROR_LOG`` file.

    SERVEKERNELS_ERROR_LOG=/tmp/errors.jsonl python -m pytest -n 2
    python -m correctness.error_summary /tmp/errors.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

LOG_ENV = "SERVEKERNELS_ERROR_LOG"


def summarize(path: str) -> list[tuple]:
    """Raises ``ValueError`` naming the file (and line) when it is missing or is not an error log."""
    worst: dict[tuple, dict] = defaultdict(lambda: {"n": 0, "rel": 0.0, "abs": 0.0, "ratio": 0.0})
    try:
        lines = open(path).read().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key = (r["test"].split("::")[0].replace("correctness/", ""), r["dtype"])
            abs_err, rel_err, atol_max = float(r["max_abs_err"]), float(r["max_rel_err"]), float(r["atol_max"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}:{number}: not a {LOG_ENV} record ({type(exc).__name__}: {exc})") from exc
        w = worst[key]
        w["n"] += 1
        if abs_err != float("inf"):
            w["rel"] = max(w["rel"], rel_err)
            w["abs"] = max(w["abs"], abs_err)
            if atol_max > 0:
                w["ratio"] = max(w["ratio"], abs_err / atol_max)
    return [(f, d, w["n"], w["abs"], w["rel"], w["ratio"]) for (f, d), w in sorted(worst.items())]


def main(argv=None) -> int:
    """Prints the table; a missing or malformed argument is one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: python -m correctness.error_summary LOG.jsonl (the file {LOG_ENV} named)", file=sys.stderr)
        return 2
    try:
        rows = summarize(argv[0])
    except ValueError as exc:
        print(f"error_summary: {exc}", file=sys.stderr)
        return 2
    print("| test file | output dtype | comparisons | worst abs err | worst abs err / max abs ref |")
    print("| --- | --- | ---: | ---: | ---: |")
    for f, d, n, a, r, _ in rows:
        if f != "test_assertions.py":  # the checker's own tests compare made-up arrays
            print(f"| {f} | {d} | {n} | {a:.3g} | {r:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
