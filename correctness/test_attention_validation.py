"""Every bad input in the contract raises ValueError naming the argument, in the reference and in the kernel.

Each case starts from a valid call and breaks one thing. The kernel must refuse it before launching (a launch
on a bad block id or an int overflow would read or write out of bounds instead of raising).
"""
from __future__ import annotations

import pytest
import torch

from kernels.testing.paged import make_paged_batch
from kernels import reference as R
from correctness.impl import T

IMPLS = {"reference": R, "triton": T}


def prefill_call(device, **changes):
    """Arguments of a valid paged_prefill call (2 sequences, GQA 2, block_size 4), with ``changes`` applied."""
    b = make_paged_batch([9, 5], [3, 5], num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=4, dtype="float16",
                         device=device)
    args = dict(q=b.q, k_cache=b.k_cache, v_cache=b.v_cache, block_table=b.block_table, seq_lens=b.seq_lens,
                query_start_loc=b.query_start_loc)
    kwargs = {}
    for key, val in changes.items():
        (args if key in args else kwargs)[key] = val(args) if callable(val) else val
    return args, kwargs


def i32(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


# (case id, argument the message must name, changes to a valid prefill call)
PREFILL_BAD = [
    ("q-2d", "q", dict(q=lambda a: a["q"][:, 0])),
    ("head-dim-mismatch", "k_cache", dict(q=lambda a: a["q"].new_zeros(8, 4, 40))),
    ("head-dim-not-multiple-of-8", "q", dict(q=lambda a: a["q"].new_zeros(8, 4, 36),
                                              k_cache=lambda a: a["k_cache"].new_zeros(5, 4, 2, 36),
                                              v_cache=lambda a: a["v_cache"].new_zeros(5, 4, 2, 36))),
    ("head-dim-over-256", "q", dict(q=lambda a: a["q"].new_zeros(8, 4, 264),
                                    k_cache=lambda a: a["k_cache"].new_zeros(5, 4, 2, 264),
                                    v_cache=lambda a: a["v_cache"].new_zeros(5, 4, 2, 264))),
    ("block-size-over-256", "k_cache", dict(k_cache=lambda a: a["k_cache"].new_zeros(1, 257, 2, 32),
                                            v_cache=lambda a: a["v_cache"].new_zeros(1, 257, 2, 32))),
    ("v-shape", "v_cache", dict(v_cache=lambda a: a["v_cache"][:, :2])),
    ("heads-not-multiple", "q", dict(q=lambda a: a["q"].new_zeros(8, 3, 32))),
    ("q-cache-dtype", "k_cache", dict(q=lambda a: a["q"].to(torch.bfloat16))),
    ("v-dtype", "v_cache", dict(v_cache=lambda a: a["v_cache"].to(torch.float32))),
    ("q-int", "q", dict(q=lambda a: a["q"].to(torch.int32))),
    ("q-len-over-seq-len", "query_start_loc", dict(seq_lens=lambda a: i32([2, 5], a["q"].device))),
    ("seq-lens-negative", "seq_lens", dict(seq_lens=lambda a: i32([-1, 5], a["q"].device))),
    ("seq-lens-count", "seq_lens", dict(seq_lens=lambda a: i32([9, 5, 1], a["q"].device))),
    ("table-too-short", "block_table", dict(block_table=lambda a: a["block_table"][:, :2])),
    ("block-id-past-cache", "block_table",
     dict(block_table=lambda a: torch.where(torch.arange(a["block_table"].shape[1], device=a["q"].device) == 1,
                                            a["k_cache"].shape[0], a["block_table"]).to(torch.int32))),
    ("block-id-negative", "block_table",
     dict(block_table=lambda a: torch.where(torch.arange(a["block_table"].shape[1], device=a["q"].device) == 0,
                                            -1, a["block_table"]).to(torch.int32))),
    ("block-table-float", "block_table", dict(block_table=lambda a: a["block_table"].float())),
    ("qsl-not-monotone", "query_start_loc", dict(query_start_loc=lambda a: i32([0, 6, 3], a["q"].device),
                                                 q=lambda a: a["q"][:3])),
    ("qsl-wrong-end", "query_start_loc", dict(query_start_loc=lambda a: i32([0, 3, 7], a["q"].device))),
    ("qsl-not-from-0", "query_start_loc", dict(query_start_loc=lambda a: i32([1, 3, 8], a["q"].device))),
    ("qsl-length", "query_start_loc", dict(query_start_loc=lambda a: i32([0, 8], a["q"].device))),
    ("cache-on-meta", "k_cache", dict(k_cache=lambda a: a["k_cache"].to("meta"))),
    ("qsl-on-meta", "query_start_loc", dict(query_start_loc=lambda a: a["query_start_loc"].to("meta"))),
    ("scale-nan", "scale", dict(scale=float("nan"))),
    ("window-0", "sliding_window", dict(sliding_window=0)),
    ("window-float", "sliding_window", dict(sliding_window=2.5)),
    ("soft-cap-0", "soft_cap", dict(soft_cap=0.0)),
    ("k-scale-0", "k_scale", dict(k_scale=0.0)),
    ("v-scale-inf", "v_scale", dict(v_scale=float("inf"))),
    ("v-scale-2-elements", "v_scale", dict(v_scale=lambda a: torch.tensor([1.0, 2.0], device=a["q"].device))),
    # a scale other than 1.0 on a non-fp8 (here float16) cache is refused, never applied by one op and ignored
    # by another (prefill once ignored it while decode applied it)
    ("k-scale-on-fp16-cache", "k_scale", dict(k_scale=0.5)),
    ("v-scale-on-fp16-cache", "v_scale", dict(v_scale=lambda a: torch.tensor([2.0], device=a["q"].device))),
]


@pytest.mark.bad_input
@pytest.mark.meta_unsupported("the reference checks values on the host: a meta tensor has none", ids=("reference",))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case, name, changes", PREFILL_BAD, ids=[c[0] for c in PREFILL_BAD])
def test_prefill_rejects(impl, case, name, changes, device):
    args, kwargs = prefill_call(device, **changes)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        IMPLS[impl].paged_prefill(**args, **kwargs)


DECODE_BAD = [c for c in PREFILL_BAD if "qsl" not in c[0] and "q-len" not in c[0]] + [
    ("q-rows-not-num-seqs", "q", dict(q=lambda a: a["q"].new_zeros(3, 4, 32))),
]


@pytest.mark.bad_input
@pytest.mark.meta_unsupported("the reference checks values on the host: a meta tensor has none", ids=("reference",))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case, name, changes", DECODE_BAD, ids=[c[0] for c in DECODE_BAD])
def test_decode_rejects(impl, case, name, changes, device):
    args, kwargs = prefill_call(device)
    args.pop("query_start_loc")
    args["q"] = args["q"][:2]  # one query per sequence
    for key, val in changes.items():
        if key == "query_start_loc":
            continue
        (args if key in args else kwargs)[key] = val(args) if callable(val) else val
    if case.startswith("head-dim") or case == "heads-not-multiple":
        args["q"] = args["q"][:2]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        IMPLS[impl].paged_decode(**args, **kwargs)


@pytest.mark.bad_input
def test_decode_split_arguments(device):
    args, _ = prefill_call(device)
    args.pop("query_start_loc")
    args["q"] = args["q"][:2]
    with pytest.raises(ValueError, match="num_splits"):
        T.paged_decode(**args, num_splits=2, split_size=16)
    with pytest.raises(ValueError, match="num_splits"):
        T.paged_decode(**args, num_splits=0)


def write_kv_call(device, **changes):
    caches = torch.full((4, 8, 2, 32), float("nan")).to(device, torch.float16)
    args = dict(key=torch.randn(5, 2, 32).to(device, torch.float16), value=torch.randn(5, 2, 32).to(device, torch.float16),
                k_cache=caches, v_cache=caches.clone(), slot_mapping=i32([3, -1, 31, 0, 9], device))
    kwargs = {}
    for key, val in changes.items():
        (args if key in args else kwargs)[key] = val(args) if callable(val) else val
    return args, kwargs


WRITE_BAD = [
    ("key-2d", "key", dict(key=lambda a: a["key"][:, 0])),
    ("value-shape", "value", dict(value=lambda a: a["value"][:4])),
    ("key-heads", "key", dict(key=lambda a: a["key"].new_zeros(5, 1, 32), value=lambda a: a["value"].new_zeros(5, 1, 32))),
    ("key-head-dim", "key", dict(key=lambda a: a["key"].new_zeros(5, 2, 40), value=lambda a: a["value"].new_zeros(5, 2, 40))),
    ("v-cache-shape", "v_cache", dict(v_cache=lambda a: a["v_cache"][:2])),
    ("v-cache-dtype", "v_cache", dict(v_cache=lambda a: a["v_cache"].to(torch.bfloat16))),
    ("cache-dtype", "k_cache", dict(k_cache=lambda a: a["k_cache"].float(), v_cache=lambda a: a["v_cache"].float())),
    ("value-dtype", "value", dict(value=lambda a: a["value"].float())),
    ("slots-count", "slot_mapping", dict(slot_mapping=lambda a: i32([0, 1, 2], a["key"].device))),
    ("slot-past-cache", "slot_mapping", dict(slot_mapping=lambda a: i32([0, 1, 2, 3, 32], a["key"].device))),
    ("slots-float", "slot_mapping", dict(slot_mapping=lambda a: a["slot_mapping"].float())),
    ("slots-2d", "slot_mapping", dict(slot_mapping=lambda a: a["slot_mapping"][None])),
    ("cache-on-meta", "v_cache", dict(v_cache=lambda a: a["v_cache"].to("meta"))),
    ("k-scale-negative", "k_scale", dict(k_scale=-1.0)),
    ("v-scale-nan", "v_scale", dict(v_scale=float("nan"))),
]


@pytest.mark.bad_input
@pytest.mark.meta_unsupported("the reference checks values on the host: a meta tensor has none", ids=("reference",))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case, name, changes", WRITE_BAD, ids=[c[0] for c in WRITE_BAD])
def test_write_kv_rejects_and_writes_nothing(impl, case, name, changes, device):
    args, kwargs = write_kv_call(device, **changes)
    before = [args[c].clone() if args[c].device.type != "meta" else None for c in ("k_cache", "v_cache")]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        IMPLS[impl].write_kv(**args, **kwargs)
    for c, old in zip(("k_cache", "v_cache"), before):
        if old is not None:
            assert torch.equal(args[c].view(torch.uint8), old.view(torch.uint8)), f"{c} was written"


MERGE_BAD = [
    ("outs-3d", "outs", lambda o, l: (o[0], l)),
    ("lses-shape", "lses", lambda o, l: (o, l[:, :2])),
    ("lses-2d", "lses", lambda o, l: (o, l[0])),
    ("no-partials", "outs", lambda o, l: (o[:0], l[:0])),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case, name, bad", MERGE_BAD, ids=[c[0] for c in MERGE_BAD])
def test_merge_states_rejects(impl, case, name, bad, device):
    outs = torch.randn(3, 4, 2, 32, device=device)
    lses = torch.randn(3, 4, 2, device=device)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        IMPLS[impl].merge_states(*bad(outs, lses))


@pytest.mark.meta_unsupported("the reference runs first, on the host values of the same arguments")
def test_valid_calls_pass(device):
    """The unbroken calls the cases start from are accepted (so each case fails for its one change)."""
    args, _ = prefill_call(device)
    for impl in IMPLS.values():
        impl.paged_prefill(**args)
        wargs, _ = write_kv_call(device)
        impl.write_kv(**wargs)
    args.pop("query_start_loc")
    args["q"] = args["q"][:2]
    for impl in IMPLS.values():
        impl.paged_decode(**args)
