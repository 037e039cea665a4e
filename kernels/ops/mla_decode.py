"""``mla_decode``: multi-head latent attention decode over a paged latent cache, split-KV (see docs/contract.md).

Inputs: ``kernels.testing.mla`` (ragged lengths with 0 and partial blocks, non-sequential block tables whose
unused entries are -1 or out of range, NaN in every slot no sequence owns, in both caches). Check cases: each
feature a case names changes the output: the newest key is loud through its rope part (logit ~6: a kernel that
drops it, or ``q_pe``, is far off while every other key still carries weight), the fp8 case's ``kv_scale`` is
far from 1, the multi-token case's loud key is the future of every query but the last, the fused case passes
vLLM's single ``[..., R + P]`` cache as two slices. Tolerances per element from the output's own magnitude
(``kernels.testing.mla.mla_tolerance``).
"""
from __future__ import annotations

from kernels.ops import Case, Inputs, NotProvided, OpSpec, ShapeSchema
from kernels.ops.models import DEEPSEEK_V3_MLA, KIMI_K2_MLA, mla_shape, ragged_lens
from roofline import cost as C

MLA_SHAPE = ShapeSchema(
    required={"num_seqs": "sequences in the batch", "q_len": "queries per sequence: 1, or a list (one per sequence)",
              "seq_len": "latent tokens per sequence (a list), this step's included", "block_size": "cache block size",
              "dtype": "q's (and the output's) dtype", "kv_dtype": "the caches' dtype", "num_heads": "query heads H",
              "rank": "kv_lora_rank R", "rope": "rope dim P", "scale": "the logit scale (from the un-absorbed head)"},
    optional={"kv_scale": "fp8 cache's scale", "loud_future": "inputs: each sequence's newest key is loud",
              "loud_logit": "inputs: the loud key's logit",
              "layout": "inputs: 'separate' caches or 'fused' (slices of one [..., R + P] tensor)"})

SMALL_MLA = dict(rank=256, rope=32, scale=(64 + 32) ** -0.5)  # a half-width latent (R 256, P 32) for small checks


def _shape(seq_lens, heads, mla=DEEPSEEK_V3_MLA, *, q_lens=1, block_size=16, dtype="bfloat16", **extra) -> dict:
    return mla_shape(seq_lens, q_lens, num_heads=heads, block_size=block_size, dtype=dtype, **mla, **extra)


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.mla import batch_for_shape  # deferred: the registry loads no torch

    b = batch_for_shape(shape, device, seed)
    return Inputs("mla_decode", shape, b.args(), b.call_kwargs(), b)


def call(fn, inputs: Inputs) -> dict:
    from kernels.testing.mla import mla_call  # deferred: the registry loads no torch

    return mla_call(fn, inputs.data)


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.mla import mla_tolerance  # deferred: the registry loads no torch

    return mla_tolerance(inputs.data)


def empty_rows(inputs: Inputs, actual: dict) -> list:
    """A sequence with no key: its rows' out exactly 0 and LSE exactly -inf (never NaN)."""
    import numpy as np
    import torch  # deferred: the registry loads no torch

    b = inputs.data
    qsl = b.qsl()
    empty = np.zeros(int(qsl[-1]), dtype=bool)
    for i, n in enumerate(b.seq_lens.cpu().numpy()):
        if n == 0:
            empty[qsl[i]:qsl[i + 1]] = True
    if not empty.any():
        return []
    mask = torch.from_numpy(empty)
    out = torch.as_tensor(actual["out"]).detach().cpu()  # the reference provider returns numpy
    ok = bool((out[mask] == 0).all())
    judged = "out 0"
    lse = actual["lse"]
    if not isinstance(lse, NotProvided):
        ok = ok and bool(torch.isneginf(torch.as_tensor(lse).detach().cpu()[mask]).all())
        judged += ", LSE -inf"
    return [("empty rows", ok, f"mla_decode: a sequence with seq_len 0 must give out 0 and lse -inf; got "
             f"out {out[mask].flatten()[:4].tolist()}", f"empty ({int(empty.sum())} rows: {judged} as required)")]


def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"out": inputs.args[0].dtype, "lse": torch.float32}


def draw(rng) -> dict:
    """A batch no check shape has: 6 to 10 sequences (one empty), 1 to 300 tokens each, 16 heads at R 256."""
    lens = [rng.randint(1, 300) for _ in range(rng.randint(6, 10))]
    lens[rng.randrange(len(lens))] = 0
    return _shape(lens, 16, SMALL_MLA, loud_future=True)


def features(args, kwargs) -> set:
    from kernels.testing.mla import mla_features  # deferred: the registry loads no torch

    return mla_features(args, kwargs)


def hints(args, kwargs) -> dict:
    """``max_seq_len`` (and with ``query_start_loc`` ``max_query_len``) for a ``validate=False`` call: the true
    maxima, read on the host here once, before any timing. A caller's own hints are kept."""
    out = {}
    if "max_seq_len" not in kwargs:
        seq_lens = args[5] if len(args) > 5 else kwargs["seq_lens"]
        out["max_seq_len"] = int(seq_lens.max()) if seq_lens.numel() else 0
    qsl = kwargs.get("query_start_loc")
    if qsl is not None and "max_query_len" not in kwargs:
        out["max_query_len"] = int((qsl[1:] - qsl[:-1]).max()) if qsl.numel() > 1 else 0
    return out


def cost(shape: dict):
    return C.mla_decode(shape["seq_len"], shape["q_len"], num_heads=shape["num_heads"], rank=shape["rank"],
                        rope=shape["rope"], block_size=shape["block_size"], dtype=shape["dtype"],
                        kv_dtype=shape["kv_dtype"])


def row_shape(s: dict) -> dict:
    def summary(v):
        return v if isinstance(v, int) else {"max": max(v), "sum": sum(v), "count": len(v)}

    return dict(num_seqs=s["num_seqs"], q_len=summary(s["q_len"]), seq_len=summary(s["seq_len"]),
                num_heads=s["num_heads"], rank=s["rank"], rope=s["rope"], block_size=s["block_size"],
                kv_dtype=s["kv_dtype"])


def full_inputs(shape: dict, big, stride0: bool) -> tuple[tuple, dict]:
    """An ``mla_decode`` call at a catalogue shape that costs (almost) no memory (``OpSpec.full_inputs``): one
    ``[num_blocks, block_size, R + P]`` cache from ``big`` passed as its two slices (the catalogue's layout),
    sequential block tables, zero queries. Byte counts and grids depend on addresses and masks only."""
    import numpy as np
    import torch  # deferred: the registry loads no torch

    from kernels.testing.paged import torch_dtype  # deferred: the registry loads no torch

    bs, lens, r, p, h = shape["block_size"], shape["seq_len"], shape["rank"], shape["rope"], shape["num_heads"]
    q_lens = [1] * len(lens) if shape["q_len"] == 1 else list(shape["q_len"])
    need = [-(-n // bs) for n in lens]
    both = big((sum(need) + 1, bs, r + p), shape["kv_dtype"])
    table = torch.zeros((len(lens), max(need)), dtype=torch.int32)
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = torch.arange(start, start + n, dtype=torch.int32)
        start += n
    dtype = torch_dtype(shape["dtype"])
    q_nope, q_pe = torch.zeros((sum(q_lens), h, r), dtype=dtype), torch.zeros((sum(q_lens), h, p), dtype=dtype)
    kwargs = {"scale": shape["scale"]}
    if shape["kv_dtype"] == "float8_e4m3fn":
        kwargs["kv_scale"] = shape.get("kv_scale", 1.0)
    if shape["q_len"] != 1:
        kwargs["query_start_loc"] = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32)
    return (q_nope, q_pe, both[..., :r], both[..., r:], table, torch.tensor(lens, dtype=torch.int32)), kwargs


def launch_case(device, fp8: bool = False, multi: bool = False) -> tuple[tuple, dict, dict]:
    """A small call for the launch-path tests: 3 sequences, 20 heads (an odd tile) at R 256 / P 32; with
    ``fp8`` a tensor ``kv_scale`` (the kernel reads it), with ``multi`` 2, 1 and 3 queries per sequence."""
    import torch  # deferred: the registry loads no torch

    from kernels.testing.mla import make_mla_batch  # deferred: the registry loads no torch

    lens, q_lens = [5, 40, 17], [2, 1, 3]
    b = make_mla_batch(lens, q_lens if multi else None, num_heads=20, rank=256, rope=32, block_size=16,
                       dtype="float16", kv_dtype="float8_e4m3fn" if fp8 else None, kv_scale=0.5, seed=3,
                       device=device)
    kwargs = b.call_kwargs()
    if fp8:
        kwargs["kv_scale"] = torch.tensor([0.5], device=device)
    hint = {"max_seq_len": max(lens)}
    if multi:
        hint["max_query_len"] = max(q_lens)
    return b.args(), kwargs, hint


def mla_case(model, tag, batch, ctx, heads, mla, *, q_len=1, kv_dtype=None, quick=False, goal="") -> Case:
    """A catalogue case: ``batch`` ragged contexts up to ``ctx``; its small shape at most 2 sequences of at most
    512 tokens (``q_len`` queries each, a list with ``query_start_loc``)."""
    lens = ragged_lens(batch, ctx)
    small_lens = ragged_lens(min(batch, 2), min(ctx, 512), seed=1)
    ql = (lambda n: 1 if q_len == 1 else [q_len] * n)
    extra = {"kv_scale": 0.05} if kv_dtype else {}
    full = _shape(lens, heads, mla, q_lens=ql(len(lens)), block_size=64, kv_dtype=kv_dtype, **extra)
    # vLLM's single [..., R + P] cache, passed as its two slices: the peer runs on its own layout, no copy
    small = _shape(small_lens, heads, mla, q_lens=ql(len(small_lens)), block_size=64, kv_dtype=kv_dtype,
                   loud_future=True, layout="fused", **extra)
    return Case("mla_decode", f"{model}/mla-decode/{tag}", full, small, quick, goal)


def cases() -> list:
    ds, kimi = DEEPSEEK_V3_MLA, KIMI_K2_MLA
    out = [
        mla_case("deepseek-v3", "b1-ctx32k-h16", 1, 32768, 16, ds, quick=True, goal="mla_traffic"),
        mla_case("deepseek-v3", "b64-ctx4k-h16", 64, 4096, 16, ds, goal="mla_traffic"),
        mla_case("deepseek-v3", "b64-ctx4k-h128", 64, 4096, 128, ds),
        mla_case("deepseek-v3", "b64-ctx4k-h16-fp8", 64, 4096, 16, ds, kv_dtype="float8_e4m3fn", goal="mla_traffic"),
        mla_case("deepseek-v3", "b64-ctx4k-h16-mtp2", 64, 4096, 16, ds, q_len=2, goal="mla_traffic"),
        mla_case("kimi-k2", "b64-ctx4k-h64", 64, 4096, 64, kimi),
    ]
    for c in out:
        c.tracked = c.name.endswith(("h128", "fp8"))
    return out


def plan(gpu) -> dict:
    """The split plan's keywords for ``gpu``: its SM count, and the 8-warp programs per SM that cover its memory
    latency (``roofline.timing_model.latency_blocks``)."""
    from kernels.triton.ops.mla_decode import MLA_RESIDENT_BLOCKS, MLA_WARPS  # deferred: no torch at import
    from roofline.timing_model import latency_blocks

    return {"num_sms": gpu.sms, "blocks_per_sm": latency_blocks(gpu, MLA_WARPS, MLA_RESIDENT_BLOCKS)}


SPEC = OpSpec(
    name="mla_decode",
    summary="MLA decode over a paged latent cache (DeepSeek-V3, Kimi K2: one latent head, split-KV, fp8, MTP)",
    reference="kernels.reference.mla:mla_decode",
    kernel="kernels.triton.ops.mla_decode:mla_decode",
    torch="kernels.torch_eager:mla_decode",
    outputs=("out", "lse"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features, shape=MLA_SHAPE,
    extra_checks=empty_rows, hints=hints, out_dtypes=out_dtypes, draw=draw, row_shape=row_shape, plan=plan,
    full_inputs=full_inputs,
    keywords={"scale": "required: a call without it is a ValueError, never a default (the latent shapes cannot "
                       "tell it); a wrong one fails test_mla_decode.py::test_a_wrong_scale_fails_the_check_case",
              "kv_scale": "",
              "query_start_loc": "selects the multi-token layout: without it q has more rows than sequences, a "
                                 "ValueError, not a silent change (the MTP check case sets it)",
              "return_lse": "selects the outputs (every check case asks for the LSE)",
              "batch_invariant": "changes bits only, within tolerance (test_mla_decode.py: bitwise properties)",
              "num_splits": "partitioning only: the contract says the output must not depend on it",
              "split_size": "partitioning only: the contract says the output must not depend on it"},
    check={
        "deepseek-v3/mla-decode-ragged": _shape([0, 1, 37, 300, 129], 16, loud_future=True),
        "small-latent/mla-decode-long-split": _shape([1500], 16, SMALL_MLA, loud_future=True),
        "odd-heads/mla-decode-h20-r256-bs13": _shape([200, 13, 0, 71], 20, SMALL_MLA, block_size=13, dtype="float16",
                                                      loud_future=True),
        "small-latent/mla-decode-bs1-fp32": _shape([40, 9, 0], 16, SMALL_MLA, block_size=1, dtype="float32",
                                                   loud_future=True),
        "deepseek-v3/mla-decode-fp8-cache": _shape([150, 1, 77], 16, kv_dtype="float8_e4m3fn", kv_scale=0.05,
                                                   loud_future=True),
        "deepseek-v3/mla-decode-mtp-q2": _shape([2, 77, 300, 0], 16, q_lens=[2, 2, 2, 0], loud_future=True),
        "vllm-cache/mla-decode-fused-r256": _shape([65, 130], 16, SMALL_MLA, block_size=64, layout="fused",
                                                   loud_future=True),
    },
    goals={"mla_traffic": (1.05, "mla_decode counted traffic within 1.05x of minimum bytes at H = 16 (each latent "
                                 "block read once for every head)")},
    style=("D", "tab:purple"),
    launch_cases={"": launch_case, "fp8": lambda device: launch_case(device, fp8=True),
                  "mtp": lambda device: launch_case(device, multi=True)},
)
