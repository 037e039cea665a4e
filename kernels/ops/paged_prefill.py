"""``paged_prefill``: varlen causal attention of query chunks over a paged cache (see docs/contract.md).

Inputs and tolerances as ``paged_decode`` (``kernels.testing.paged``). Check cases: each chunk's future key is
loud (a causal-mask bug is far off), the windowed case's window is shorter than its contexts with key 0 loud,
the soft-capped case's logits are far past the cap, chunks start mid-sequence (chunked prefill) and include
q_len 0 and 1, the sinks sit near the LSE (with a window, and through an fp8 cache).
"""
from __future__ import annotations

from kernels.ops import Case, Inputs, Invariance, OpSpec
from kernels.ops.models import (GEMMA2_LIKE, GPT_OSS_120B_ATTN, GPT_OSS_WINDOW, LLAMA3_8B, QWEN25_7B,
                                attention_shape)
from kernels.ops.paged_decode import ATTENTION_SHAPE, _arg, out_dtypes, row_shape
from kernels.ops.paged_decode import hints as decode_hints
from roofline import cost as C


def _shape(seq_lens, q_lens, heads, *, dtype="bfloat16", kv_dtype=None, block_size=16, **extra) -> dict:
    return dict(q_len=list(q_lens), seq_len=list(seq_lens), num_seqs=len(seq_lens), block_size=block_size,
                dtype=dtype, kv_dtype=kv_dtype or dtype, **heads, **extra)


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.paged import batch_for_shape  # deferred: the registry loads no torch

    b = batch_for_shape(shape, device, seed)
    return Inputs("paged_prefill", shape, b.prefill_args(), dict(b.kwargs), b)


def call(fn, inputs: Inputs) -> dict:
    from kernels.testing.paged import attention_call  # deferred: the registry loads no torch

    return attention_call(fn, inputs.data, decode=False)


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.paged import attention_tolerance  # deferred: the registry loads no torch

    return attention_tolerance(inputs.data, decode=False)


def diagnose(inputs: Inputs, output: str, actual, expected, tol) -> str:
    """Where a failing output is wrong in the batch's terms, and which planted structure the errors follow."""
    from kernels.testing.diagnosis import attention  # deferred: the registry loads no torch

    return attention(inputs.data, False, output, actual, expected, tol)


def features(args, kwargs) -> set:
    from kernels.testing.paged import attention_features  # deferred: the registry loads no torch

    return attention_features(args, kwargs)


def draw(rng) -> dict:
    """A batch no check shape has: 9 to 12 sequences of 1 to 200 keys, chunks of 1 to 40 queries, at a small GQA
    layout."""
    lens = [rng.randint(1, 200) for _ in range(rng.randint(9, 12))]
    return _shape(lens, [rng.randint(1, min(n, 40)) for n in lens], dict(num_q_heads=8, num_kv_heads=2, head_dim=64),
                  loud_future=True)


def hints(args, kwargs) -> dict:
    """``max_query_len`` and ``max_seq_len`` for a ``validate=False`` call: the true maxima, read on the host here
    (once, before timing). A hint the caller already passes is kept."""
    out = decode_hints(args, kwargs)
    if "max_query_len" not in kwargs:
        qsl = _arg(args, kwargs, 5, "query_start_loc")
        out["max_query_len"] = int((qsl[1:] - qsl[:-1]).max()) if qsl.numel() > 1 else 0
    return out


def cost(shape: dict):
    return C.paged_prefill(shape["q_len"], shape["seq_len"], num_q_heads=shape["num_q_heads"],
                           num_kv_heads=shape["num_kv_heads"], head_dim=shape["head_dim"],
                           block_size=shape["block_size"], dtype=shape["dtype"], kv_dtype=shape["kv_dtype"],
                           sinks=shape.get("sinks") is not None)


def full_inputs(shape: dict, big, stride0: bool) -> tuple[tuple, dict]:
    from kernels.testing.paged import full_attention_inputs  # deferred: the registry loads no torch

    return full_attention_inputs(shape, big, decode=False)


def fa2_bytes(s: dict) -> float:
    """The FlashAttention-2 traffic model at shape ``s`` (``roofline.cost.prefill_fa2_bytes``)."""
    return C.prefill_fa2_bytes(s["q_len"], s["seq_len"], num_q_heads=s["num_q_heads"], head_dim=s["head_dim"],
                               dtype=s["dtype"], kv_dtype=s["kv_dtype"])


def launch_case(device, kv_dtype=None, sinks=False) -> tuple[tuple, dict, dict]:
    from kernels.testing.paged import launch_case as attention_launch_case  # deferred: the registry loads no torch

    return attention_launch_case(False, device, kv_dtype, sinks)


def cases() -> list:
    L8 = LLAMA3_8B
    _attn = attention_shape
    return [
        Case("paged_prefill", "llama3-8b/prefill/full-2k", _attn([2048], [2048], **L8),
             _attn([96], [96], **L8), True, "prefill_fa2"),
        Case("paged_prefill", "llama3-8b/prefill/chunk512-at-8k", _attn([8192], [512], **L8),
             _attn([160], [40], **L8), False, "prefill_fa2"),
        Case("paged_prefill", "llama3-8b/prefill/mixed-4seq",
             _attn([1024, 4096, 2048, 3000], [1024, 512, 256, 1], **L8),
             _attn([64, 96, 80, 70], [64, 24, 16, 1], **L8), False, "prefill_fa2", tracked=True),
        Case("paged_prefill", "gpt-oss-120b/prefill/full-2k-sinks",
             _attn([2048], [2048], **GPT_OSS_120B_ATTN, sinks=5.0), _attn([96], [96], **GPT_OSS_120B_ATTN, sinks=5.0),
             False, "prefill_fa2"),
    ]


INVARIANCE = "kernels.testing.invariance"

SPEC = OpSpec(
    name="paged_prefill",
    summary="varlen causal prefill over a paged cache (chunked, GQA, window, soft-cap, fp8 cache)",
    reference="kernels.reference.attention:paged_prefill",
    kernel="kernels.triton.ops.paged_prefill:paged_prefill",
    torch="kernels.torch_eager:paged_prefill",
    outputs=("out", "lse"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features, hints=hints,
    shape=ATTENTION_SHAPE,
    out_dtypes=out_dtypes, draw=draw, diagnose=diagnose,
    keywords={"scale": "", "sliding_window": "", "soft_cap": "", "k_scale": "", "v_scale": "", "sinks": "",
              "return_lse": "selects the outputs (every check case asks for the LSE)",
              "batch_invariant": "changes bits only, within tolerance (its own properties: test_invariance.py)"},
    optional_keywords=("sinks",),
    check={
        "llama3-8b/prefill-mixed": _shape([0, 1, 97, 300, 64], [0, 1, 97, 45, 1], LLAMA3_8B, loud_future=True),
        "qwen2.5-7b/prefill-chunked": _shape([260, 33, 129], [70, 33, 1], QWEN25_7B, dtype="float16",
                                             loud_future=True),
        "gemma2-like/prefill-window64-cap50": _shape([200, 90], [72, 90], GEMMA2_LIKE, sliding_window=64,
                                                     soft_cap=50.0, loud_future=True, q_scale=20.0,
                                                     scale=144 ** -0.5),
        "llama3-8b/prefill-fp8-cache": _shape([150, 7, 64], [150, 1, 20], LLAMA3_8B, kv_dtype="float8_e4m3fn",
                                              k_scale=0.11, v_scale=0.07, loud_future=True),
        "gpt-oss-120b/prefill-window128-sinks": _shape([150, 20, 1], [30, 20, 1], GPT_OSS_120B_ATTN,
                                                       sliding_window=GPT_OSS_WINDOW, sinks=5.0, loud_future=True),
        "gpt-oss-120b/prefill-sinks-fp8-cache": _shape([150, 33], [40, 7], GPT_OSS_120B_ATTN,
                                                       kv_dtype="float8_e4m3fn",
                                                       k_scale=0.11, v_scale=0.07, sinks=5.0, loud_future=True),
    },
    goals={"prefill_fa2": (1.0, "paged_prefill counted traffic at or below the FlashAttention-2 model (K/V "
                                "re-read once per 128-query tile per query head)")},
    full_size_count=True,
    plan=lambda gpu: {"num_sms": gpu.sms},
    full_inputs=full_inputs, row_shape=row_shape, fa2_bytes=fa2_bytes, style=("s", "tab:orange"),
    launch_cases={"": launch_case, "fp8": lambda device: launch_case(device, "float8_e4m3fn"),
                  "sinks": lambda device: launch_case(device, sinks=True)},
    invariance=(
        Invariance("paged_prefill alone vs batch", f"{INVARIANCE}:prefill_alone_vs_batch"),
        Invariance("paged_prefill chunked vs one shot", f"{INVARIANCE}:prefill_chunked_vs_one_shot"),
        Invariance("paged_prefill last row vs 1-token chunk", f"{INVARIANCE}:prefill_last_row_vs_decode"),
        # two kernels: not promised (the engine's invariant mode avoids it)
        Invariance("paged_decode vs last prefill row", f"{INVARIANCE}:prefill_last_row_vs_decode", promised=(),
                   args=(("decode_op", "paged_decode"),)),
    ),
)
