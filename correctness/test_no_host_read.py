"""The launch path with no host read: every op of ``kernels.triton`` with ``validate=False``.

- With the kernels replaced by a recorder (``perf.launch_recorder``) and every tensor argument wrapped in
  ``NoHostRead`` (raises on ``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``int()``,
  ``float()``, ``__index__``, ``__array__``, printing, a move to the CPU, and on the ops whose output size
  depends on values, which sync on a GPU: ``bincount``, ``nonzero``, ``unique``, ``masked_select``, a boolean
  index), each op launches, with integer grids, and reads nothing back. The wrapper propagates: tensors the
  launcher derives from an argument (the GEMMs' tile tables) are poisoned too.
- Positive control: the same poisoned calls with ``validate=True`` do read (the value checks), so the wrapper
  catches what it must.
- On real inputs ``validate=False`` (with the hints a caller would prepare) gives the bitwise result of
  ``validate=True``, also where an exact ``max_seq_len`` hint ends one key past a fixed partition boundary;
  without hints the documented shape-bound plan is used.
- On a GPU (``gpu`` marker) every op captures in a CUDA graph and replays to the eager result.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels.triton as T
from correctness.launch_cases import CASES, NO_KERNEL, Q_LENS, READ_FREE, SEQ_LENS
from kernels.testing.paged import make_paged_batch
from kernels.triton.ops.paged_decode import INVARIANT_SPLIT_SIZE
from kernels.reference import quant as RQ
from perf.launch_recorder import recorded_launches


class HostReadError(AssertionError):
    """A launcher read a device tensor's values on the host (or ran an op that would sync to size its output)."""


_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
          torch.Tensor.__index__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__complex__,
          torch.Tensor.__array__, torch.Tensor.__repr__, torch.Tensor.__format__,
          torch.bincount, torch.Tensor.bincount, torch.nonzero, torch.Tensor.nonzero, torch.unique,
          torch.Tensor.unique, torch.masked_select, torch.Tensor.masked_select, torch.argwhere}


def _moves_to_host(func, args, kwargs) -> bool:
    if func not in (torch.Tensor.to, torch.Tensor.copy_):
        return False
    targets = list(args[1:]) + list(kwargs.values())
    return any((isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu") for t in targets)


def _bool_index(func, args) -> bool:
    if func not in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
        return False
    idx = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx)


class NoHostRead(torch.Tensor):
    """A tensor whose values may be used by device ops only."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS or _moves_to_host(func, args, kwargs) or _bool_index(func, args):
            raise HostReadError(f"host read of a device tensor: {getattr(func, '__name__', func)}")
        return super().__torch_function__(func, types, args, kwargs)


def poisoned(x):
    """``x`` with every tensor inside (also an Int4Weight/Fp8Weight's fields) wrapped in ``NoHostRead``."""
    if isinstance(x, torch.Tensor):
        return x.as_subclass(NoHostRead)
    if isinstance(x, RQ.Int4Weight):
        return RQ.Int4Weight(poisoned(x.qweight), poisoned(x.scales), poisoned(x.zeros), x.group_size)
    if isinstance(x, RQ.Fp8Weight):
        return RQ.Fp8Weight(poisoned(x.data), poisoned(x.scales), x.granularity, x.block_size)
    if isinstance(x, tuple):
        return tuple(poisoned(v) for v in x)
    if isinstance(x, dict):
        return {k: poisoned(v) for k, v in x.items()}
    return x


def plain(x):
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
def test_every_public_op_has_a_case():
    """Every public function of kernels.triton is covered here (the dataclasses are not ops)."""
    ops = {n for n in T.__all__ if n not in ("Int4Weight", "Fp8Weight", "Mxfp4Weight")}
    assert ops == {CASES[c]("cpu")[0] for c in CASES}


def _call(case, device="cpu", *, validate, hints=True, poison=False):
    op, args, kwargs, hint = CASES[case](device)
    if poison:
        args, kwargs = poisoned(args), poisoned(kwargs)
    kw = dict(kwargs, validate=validate, **(hint if hints else {}))
    return getattr(T, op)(*args, **kw)


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("hints", [True, False], ids=["hints", "no-hints"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_false_reads_nothing_on_the_host(case, hints):
    with recorded_launches() as launches:
        _call(case, validate=False, hints=hints, poison=True)
    if case in NO_KERNEL:
        assert not launches
        return
    assert launches, "the op launched no kernel"
    for launch in launches:
        assert launch.grid and all(type(g) is int and g >= 1 for g in launch.grid), (launch.kernel, launch.grid)


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("case", sorted(set(CASES) - READ_FREE))
def test_validated_call_does_read_the_host_positive_control(case):
    """The wrapper catches the value checks of ``validate=True``: so the test above could fail, and it does on
    a launcher that still reads (every one of these before the launch path existed)."""
    with recorded_launches(), pytest.raises(HostReadError):
        _call(case, validate=True, poison=True)


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("op", ["grouped_gemm", "grouped_gemm_int4", "grouped_gemm_fp8"])
def test_gemm_grid_is_a_shape_bound_and_surplus_tiles_are_empty(op):
    from kernels.triton.ops.grouped_gemm import group_tile_table, max_row_tiles, num_row_tiles

    _, args, _, _ = CASES[op]("cpu")
    offsets = args[-1]
    t, e = int(offsets[-1]), int(offsets.shape[0]) - 1
    with recorded_launches() as launches:
        _call(op, validate=False, poison=True)
    (launch,) = launches
    block_m = launch.meta["BLOCK_M"]
    exact = num_row_tiles(offsets.numpy().astype(np.int64), block_m)
    assert launch.grid[0] == max_row_tiles(t, e, block_m) > exact  # a real surplus here: the test means it
    tiles = next(plain(a) for a in launch.args if isinstance(a, torch.Tensor) and a.shape == (3, launch.grid[0]))
    assert torch.equal(tiles[:, :exact], group_tile_table(offsets, block_m, exact, "cpu"))
    assert (tiles[1, exact:] == tiles[2, exact:]).all()  # surplus: first == end, the program returns at once


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("case", ["paged_decode-fp8", "paged_prefill-fp8", "write_kv-fp8"])
def test_tensor_scales_are_read_by_the_kernel(case):
    op, args, kwargs, _ = CASES[case]("cpu")
    with recorded_launches() as launches:
        getattr(T, op)(*args, **kwargs, validate=False)
    launch = launches[0]
    ptrs = {a.data_ptr() for a in launch.args if isinstance(a, torch.Tensor)}
    assert kwargs["k_scale"].data_ptr() in ptrs and launch.meta["K_SCALE_PTR"]
    v_scale = kwargs["v_scale"]
    assert launch.meta["V_SCALE_PTR"] == isinstance(v_scale, torch.Tensor)  # a float is passed by value
    assert not isinstance(v_scale, torch.Tensor) or v_scale.data_ptr() in ptrs


# ------------------------------------------------------------------------------------------------ results

def _bits(out) -> list:
    """Every tensor of an op's result as raw bytes (NaN compares by its bits; write_kv returns its caches)."""
    outs = out if isinstance(out, tuple) else (out,)
    flat = []
    for o in outs:
        if isinstance(o, (RQ.Int4Weight, RQ.Fp8Weight, RQ.Mxfp4Weight)):
            flat += [v for v in vars(o).values() if isinstance(v, torch.Tensor)]
        else:
            flat.append(o)
    return [plain(o).contiguous().view(torch.uint8) for o in flat]


def _equal_bits(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.meta_unsupported("calls kernels.triton's launchers itself; validated, they read metadata on the host")
@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_false_gives_the_validated_result_bitwise(case, device):
    validated, launch_path = (_call(case, device, validate=v) for v in (True, False))
    assert _equal_bits(_bits(validated), _bits(launch_path))


@pytest.mark.meta_unsupported("calls kernels.triton's launchers itself; validated, they read metadata on the host")
@pytest.mark.parametrize("plan,part", [(dict(batch_invariant=True), INVARIANT_SPLIT_SIZE), (dict(split_size=32), 32)],
                         ids=["batch_invariant", "split_size"])
def test_an_exact_hint_one_key_past_a_partition_boundary(plan, part, device):
    """The longest sequence holds k * S + 1 keys for a fixed partition length S: the plan needs k + 1
    partitions, and a hint read one short plans k and drops the newest key (made loud, so it also shows in
    the values). validate=False with the exact hint must give the validated call's bits."""
    seq_lens = [2 * part + 1, 5, part]
    b = make_paged_batch(seq_lens, num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype="float16",
                         loud_future=True, seed=11, device=device)
    call = dict(b.kwargs, **plan, return_lse=True)
    validated = T.paged_decode(*b.decode_args(), **call)
    hinted = T.paged_decode(*b.decode_args(), **call, max_seq_len=max(seq_lens), validate=False)
    assert _equal_bits(_bits(validated), _bits(hinted))


@pytest.mark.meta_unsupported("calls kernels.triton's launchers itself; validated, they read metadata on the host")
@pytest.mark.parametrize("case", ["paged_decode", "paged_prefill"])
def test_no_hint_plan_is_the_documented_shape_bound(case, device):
    """validate=False without hints plans for max_blocks * block_size keys and num_tokens query rows: the same
    result as a validated call given those bounds as hints (and still the right answer: the bound is valid)."""
    op, args, kwargs, _ = CASES[case](device)
    bt, q = args[3], args[0]
    bound = {"max_seq_len": int(bt.shape[1]) * int(args[1].shape[1])}
    if op == "paged_prefill":
        bound["max_query_len"] = int(q.shape[0])
    fn = getattr(T, op)
    unhinted = fn(*args, **kwargs, validate=False)
    assert _equal_bits(_bits(unhinted), _bits(fn(*args, **kwargs, **bound)))
    hinted = fn(*args, **kwargs, **_case_hints(case))
    ref = fn(*args, **kwargs)
    assert _equal_bits(_bits(hinted), _bits(ref))


def _case_hints(case):
    return CASES[case]("cpu")[3]


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("op,hint,value", [("paged_decode", "max_seq_len", max(SEQ_LENS) - 1),
                                            ("paged_prefill", "max_seq_len", max(SEQ_LENS) - 1),
                                            ("paged_prefill", "max_query_len", max(Q_LENS) - 1)])
def test_a_hint_below_the_data_is_a_value_error_when_validated(op, hint, value):
    _, args, kwargs, _ = CASES[op]("cpu")
    with pytest.raises(ValueError, match=hint):
        getattr(T, op)(*args, **kwargs, **{hint: value})


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("value", [-1, 2.5, True, "8"])
def test_a_hint_that_is_not_an_int_is_a_value_error(validate, value):
    _, args, kwargs, _ = CASES["paged_decode"]("cpu")
    with recorded_launches() as launches, pytest.raises(ValueError, match="max_seq_len"):
        T.paged_decode(*args, **kwargs, max_seq_len=value, validate=validate)
    assert not launches


@pytest.mark.host_only("kernels replaced by perf.launch_recorder: nothing launches (host tensors stand in for a device)")
def test_validate_false_keeps_the_shape_checks():
    _, args, kwargs, _ = CASES["paged_prefill"]("cpu")
    q, k, v, bt, sl, qsl = args
    with recorded_launches() as launches:
        with pytest.raises(ValueError, match="query_start_loc"):
            T.paged_prefill(q, k, v, bt, sl, qsl[:-1], validate=False)
        with pytest.raises(ValueError, match="v_cache"):
            T.paged_prefill(q, k, v.float(), bt, sl, qsl, validate=False)
        with pytest.raises(ValueError, match="group_offsets"):
            _, (a, w, offs), _, _ = CASES["grouped_gemm"]("cpu")
            T.grouped_gemm(a, w, offs.float(), validate=False)
    assert not launches


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(set(CASES) - NO_KERNEL))
def test_every_op_captures_in_a_cuda_graph_and_replays_to_eager(case):
    op, args, kwargs, hints = CASES[case]("cuda")
    fn = getattr(T, op)
    call = lambda: fn(*args, **kwargs, **hints, validate=False)  # noqa: E731
    eager = _bits(call())  # warm-up: compiles outside the capture
    if case.startswith("write_kv"):
        eager = [t.clone() for t in eager]
        for t in args[2:4]:
            t.zero_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    if case.startswith("write_kv"):
        for t in args[2:4]:
            t.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    graph.replay()
    torch.cuda.synchronize()
    assert _equal_bits(eager, _bits(captured))
