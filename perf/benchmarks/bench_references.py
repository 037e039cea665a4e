"""Wall time of the float64 references (CPU, every machine): the oracle's cost, which bounds the parity suite."""
from __future__ import annotations

from ._common import REFERENCE_OPS


class TimeReference:
    params = list(REFERENCE_OPS)
    param_names = ["op"]
    timeout = 300

    def setup(self, op):
        from ._common import first_case, prepared  # deferred: asv imports to list; setup loads
        c = first_case(op)
        self.prep = prepared(op, c.small, "cpu")  # the scaled-down shape the report checks parity at

    def time_reference(self, op):
        self.prep.expected()
