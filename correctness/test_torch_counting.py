"""Counting an eager torch implementation (``roofline.torch_counting``): hand-computed bytes per aten op, views
moving nothing, and the report's rows for a provider that is not Triton."""
from __future__ import annotations

import pytest
import torch

from roofline.torch_counting import count_torch
from kernels.impls import load

pytestmark = pytest.mark.host_only("a torch dispatch mode over host tensors: bytes from shapes, no kernel")

F32 = 4


def _count(fn):
    with count_torch() as counter:
        fn()
    assert counter.failure is None
    return counter


def test_a_matmul_reads_both_operands_and_writes_its_output_once():
    m, k, n = 5, 7, 3
    a, b = torch.randn(m, k), torch.randn(k, n)
    c = _count(lambda: a @ b)
    assert [launch.kernel for launch in c.launches] == ["mm"]
    assert c.total_bytes == (m * k + k * n + m * n) * F32
    assert c.load_bytes == (m * k + k * n) * F32 and c.store_bytes == m * n * F32


def test_an_add_and_the_same_tensor_twice_read_once():
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    assert _count(lambda: x + y).total_bytes == 3 * 24 * F32
    assert _count(lambda: x + x).total_bytes == 2 * 24 * F32  # one op reads x once


def test_views_move_nothing():
    x = torch.randn(4, 6)
    c = _count(lambda: (x.view(24), x.t(), x.transpose(0, 1), x.permute(1, 0), x[1], x[:, 2:], x.unsqueeze(0),
                        x.unsqueeze(0).squeeze(0), x.detach(), x.expand(3, 4, 6), x.reshape(2, 12),
                        x.as_strided((2, 2), (1, 1)), x.contiguous(), torch.empty(5), torch.empty_like(x)))
    assert c.launches == [] and c.total_bytes == 0


def test_contiguous_of_a_transpose_copies_twice_its_bytes():
    x = torch.randn(8, 3)
    c = _count(lambda: x.t().contiguous())
    assert len(c.launches) == 1 and c.total_bytes == 2 * 24 * F32


def test_a_broadcast_input_is_read_at_its_own_size_and_in_place_ops_write_what_they_read():
    x, row = torch.randn(16, 8), torch.randn(8)
    assert _count(lambda: x + row).total_bytes == (16 * 8 + 8 + 16 * 8) * F32  # row read once, not 16 times
    assert _count(lambda: x.mul_(2)).total_bytes == 2 * 16 * 8 * F32
    assert _count(lambda: x.zero_()).total_bytes == 16 * 8 * F32  # overwritten, not read
    out = torch.empty(16, 8)
    assert _count(lambda: torch.add(x, x, out=out)).total_bytes == 2 * 16 * 8 * F32  # out= is written, not read


def test_a_gather_reads_the_rows_it_indexes_not_the_table():
    table, idx = torch.randn(100, 8), torch.tensor([3, 3, 7])
    assert _count(lambda: table[idx]).total_bytes == 3 * 8 * F32 + 3 * 8 + 3 * 8 * F32  # rows + int64 idx + out
    assert _count(lambda: table.index_select(0, idx)).total_bytes == 3 * 8 * F32 + 3 * 8 + 3 * 8 * F32


def test_each_op_is_a_launch_and_dtype_sets_the_element_size():
    x = torch.randn(10, dtype=torch.float32)
    c = _count(lambda: (x.to(torch.bfloat16) * 2).float())
    assert [launch.kernel for launch in c.launches] == ["_to_copy", "mul", "_to_copy"]
    assert c.total_bytes == (10 * 4 + 10 * 2) + (10 * 2 + 10 * 2) + (10 * 2 + 10 * 4)


def test_the_report_counts_the_torch_provider_and_not_the_numpy_reference():
    from kernels.ops import get
    from roofline.report_counting import TORCH_COUNTED_BY, count_case

    case = get("merge_states").cases()[0]
    row = count_case(case, provider=load("torch"))
    assert row["parity"] == "pass" and row["counted_by"] == TORCH_COUNTED_BY
    assert row["bytes_counted_small"] >= row["bytes_min_small"] and row["launches_small"] >= 1
    assert row["programs_small"] is None  # an eager op's grid is not seen
    assert count_case(case, provider=load("reference"))["counting"].startswith("not counted: ")


def test_an_interpreter_that_cannot_run_does_not_stop_counting_eager_torch(monkeypatch):
    from kernels.ops import get
    from roofline import report_counting

    monkeypatch.setattr(report_counting, "interpreter_problem", lambda: "this triton cannot interpret")
    case = get("merge_states").cases()[0]
    (row,) = report_counting.count_cases([case], provider=load("torch")).values()
    assert row["counted_by"] == report_counting.TORCH_COUNTED_BY and row["parity"] == "pass"


def test_a_module_that_says_triton_but_launches_none_is_counted_as_eager_torch(tmp_path, monkeypatch):
    """A plain torch module that never declared ``SERVEKERNELS_TRITON = False``: no Triton launch is seen, so
    its aten ops are counted (not a zero-byte Triton count)."""
    from kernels.ops import get
    from roofline.report_counting import TORCH_COUNTED_BY, count_case

    (tmp_path / "undeclared_torch_merge.py").write_text(
        "from kernels.torch_eager import merge_states  # an eager torch merge, flags left at their defaults\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    row = count_case(get("merge_states").cases()[0], provider=load("undeclared_torch_merge"))
    assert row["parity"] == "pass" and row["counted_by"] == TORCH_COUNTED_BY, row
    assert row["bytes_counted_small"] >= row["bytes_min_small"] and row["launches_small"] >= 1
