"""Deterministic tracks: traffic counted under the Triton interpreter, and the modeled H100 time, per case.

Counting runs each kernel under the interpreter exactly as ``servekernels report`` does (attention and GEMMs on
the full grid with sampled programs, the rest at the scaled-down shape); the numbers do not depend on the machine, so asv's graphs show a kernel that starts re-reading memory on the commit it lands.
"""
from __future__ import annotations

from ._common import TRACKED_CASES


class TrackCountedTraffic:
    params = list(TRACKED_CASES)
    param_names = ["case"]
    timeout = 900

    def setup_cache(self):
        from ._common import BACKEND  # deferred: asv imports to list; setup loads

        if BACKEND != "interpreter":
            return {"_skip": "counting needs the Triton interpreter (set TRITON_INTERPRET=1 on a GPU box)"}
        from roofline.catalogue import catalogue  # deferred: asv imports to list; setup loads
        from roofline.report import count_cases  # deferred: asv imports to list; setup loads

        cases = [c for c in catalogue() if c.name in TRACKED_CASES]
        return count_cases(cases)

    def setup(self, counted, case):
        if "_skip" in counted:
            raise NotImplementedError(counted["_skip"])
        row = counted.get(case, {})
        if row.get("bytes_counted_small") is None:
            raise NotImplementedError(row.get("status", f"{case}: not counted"))

    def track_counted_bytes(self, counted, case):
        """Counted bytes at full model size (full grid; see ``roofline.report.count_full``) where the report
        counts them so, else at the scaled-down shape."""
        row = counted[case]
        return row.get("bytes_counted_full") or row["bytes_counted_small"]

    track_counted_bytes.unit = "bytes"

    def track_counted_over_min(self, counted, case):
        from roofline.catalogue import case_cost  # deferred: asv imports to list; setup loads

        from ._common import case as find  # deferred: asv imports to list; setup loads

        row = counted[case]
        if row.get("bytes_counted_full"):
            c = find(case)
            return row["bytes_counted_full"] / case_cost(c.op, c.shape).bytes_min
        return row["bytes_counted_small"] / row["bytes_min_small"]

    track_counted_over_min.unit = "ratio"

    def track_programs(self, counted, case):
        row = counted[case]
        return row.get("programs_full") or row["programs_small"]

    track_programs.unit = "programs"


class TrackModeledTime:
    """``t_roof`` on an H100 SXM at full model size: changes only when a cost model or catalogue shape does."""

    params = list(TRACKED_CASES)
    param_names = ["case"]
    unit = "us"

    def setup(self, case):
        from roofline.catalogue import case_cost  # deferred: asv imports to list; setup loads
        from roofline.specs import get_spec  # deferred: asv imports to list; setup loads

        from ._common import case as find  # deferred: asv imports to list; setup loads

        c = find(case)
        self.t = case_cost(c.op, c.shape).roof(get_spec("h100-sxm"))["t_roof_s"] * 1e6

    def track_modeled_time_us(self, case):
        return self.t
