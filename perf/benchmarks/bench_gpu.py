"""Device time on a GPU (skipped without one: setup raises NotImplementedError, which asv reports as skipped).

Timed by ``perf.harness`` (cold L2, median of per-call CUDA events), output re-checked against the reference.
"""
from __future__ import annotations

from ._common import TRACKED_CASES


class TrackDeviceTime:
    params = list(TRACKED_CASES)
    param_names = ["case"]
    unit = "us"
    timeout = 900

    def setup(self, case):
        from ._common import has_gpu  # deferred: asv imports to list; setup loads
        if not has_gpu():
            raise NotImplementedError("no CUDA GPU: device time is not measured here")
        from ._common import case as find  # deferred: asv imports to list; setup loads
        from ._common import prepared  # deferred: asv imports to list; setup loads

        self.case = find(case)
        self.prep = prepared(self.case.op, self.case.shape, "cuda")

    def _timing(self):
        from kernels.impls import load  # deferred: asv imports to list; setup loads
        from perf.harness import DEFAULT_POLICY, measure_provider  # deferred: asv imports to list; setup loads

        prep = self.prep

        def check(out):
            ok, _, detail = prep.check_raw(out, prep.expected())
            if not ok:
                raise AssertionError(detail)

        return measure_provider(self.case.op, load("servekernels"), prep.args, prep.kwargs, policy=DEFAULT_POLICY,
                                check=check)

    def track_device_time_us(self, case):
        return self._timing().median_us

    def track_pct_of_roof(self, case):
        from roofline.catalogue import case_cost  # deferred: asv imports to list; setup loads
        from roofline.specs import detect_spec, get_spec  # deferred: asv imports to list; setup loads

        spec = detect_spec() or get_spec()
        t_roof = case_cost(self.case.op, self.case.shape).roof(spec)["t_roof_s"] * 1e6
        return 100.0 * t_roof / self._timing().median_us

    track_pct_of_roof.unit = "percent"
