"""Worst kernel-vs-reference error per test file and dtype, from a ``SERVEKERNELS_ERROR_LOG`` file.

    SERVEKERNELS_ERROR_LOG=/tmp/errors.jsonl python -m pytest -n 2
    python -m correctness.error_summary /tmp/errors.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def summarize(path: str) -> list[tuple]:
    worst: dict[tuple, dict] = defaultdict(lambda: {"n": 0, "rel": 0.0, "abs": 0.0, "ratio": 0.0})
    for line in open(path):
        r = json.loads(line)
        key = (r["test"].split("::")[0].replace("correctness/", ""), r["dtype"])
        w = worst[key]
        w["n"] += 1
        if r["max_abs_err"] != float("inf"):
            w["rel"] = max(w["rel"], r["max_rel_err"])
            w["abs"] = max(w["abs"], r["max_abs_err"])
            if r["atol_max"] > 0:
                w["ratio"] = max(w["ratio"], r["max_abs_err"] / r["atol_max"])
    return [(f, d, w["n"], w["abs"], w["rel"], w["ratio"]) for (f, d), w in sorted(worst.items())]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("| test file | output dtype | comparisons | worst abs err | worst abs err / max abs ref |")
    print("| --- | --- | ---: | ---: | ---: |")
    for f, d, n, a, r, _ in summarize(argv[0]):
        if f != "test_assertions.py":  # the checker's own tests compare made-up arrays
            print(f"| {f} | {d} | {n} | {a:.3g} | {r:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
