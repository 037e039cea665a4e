"""The report's invariance section (``roofline/invariance.py``): costs per mode and the properties table."""
from __future__ import annotations

import pytest
from roofline import invariance as RI
from roofline.catalogue import catalogue
from roofline.specs import get_spec

pytestmark = pytest.mark.host_only("cost rows and table rendering: arithmetic only")


def test_cost_rows_count_both_modes_and_the_table_renders():
    spec = get_spec("h100-sxm")
    case = next(c for c in catalogue() if c.name == "mixtral/int4-w13/decode-t16")
    (row,) = RI.cost_rows([case], spec)
    assert "note" not in row, row
    for mode in ("default", "invariant"):
        assert row[f"bytes_{mode}"] > 0 and row[f"programs_{mode}"] > 0 and row[f"t_model_us_{mode}"] > 0
    # decode-sized: the invariant mode takes the prefill tile (64 rows, N 128), so more programs than the
    # default's 32x256 decode tile
    assert row["programs_full_invariant"] > row["programs_full_default"]
    md = RI.markdown([row], [{"impl": "servekernels", "property": "p", "mode": "invariant", "verdict": "holds",
                              "promised": True}], spec)
    assert case.name in md and "| servekernels | p | invariant | yes | holds |" in md and "modeled" in md
