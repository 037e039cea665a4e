"""``paged_decode``: one query per sequence over a paged KV cache, split-KV (see docs/contract.md).

Inputs: ``kernels.testing.paged`` (ragged lengths with 0 and partial blocks, non-sequential block tables whose
unused entries are -1 or out of range, NaN in every slot no sequence owns); tolerances per element from the
output's own magnitude (``attention_tolerance``). Check cases: every feature a case names changes the output:
the newest key is loud (logit ~6-8: a decode that drops it is far off, and every other key still
carries weight, so split and mask bugs show too), the window is shorter than the context (and key 0,
outside it, is loud), the soft-capped case's logits are far past the cap (``q_scale``), the sinks sit near the
LSE (a kernel that drops them, or counts them once per partition of the split fp8 case, is far off).
"""
from __future__ import annotations

from kernels.ops import Case, Inputs, Invariance, NotProvided, OpSpec, ShapeSchema
from kernels.ops.models import (GEMMA2_LIKE, GPT_OSS_120B_ATTN, GPT_OSS_WINDOW, LLAMA3_8B, LLAMA3_70B,
                                QWEN25_7B, attention_shape, ragged_lens)
from roofline import cost as C
from roofline.timing_model import latency_blocks

# the shape of a paged attention call (``paged_decode`` and ``paged_prefill``)
ATTENTION_SHAPE = ShapeSchema(
    required={"num_seqs": "sequences in the batch", "q_len": "queries per sequence: 1, or a list (one per sequence)",
              "seq_len": "KV tokens per sequence (a list), this step's included", "block_size": "cache block size",
              "dtype": "q's (and the output's) dtype", "kv_dtype": "the caches' dtype",
              "num_q_heads": "query heads", "num_kv_heads": "KV heads", "head_dim": "head size"},
    optional={"sliding_window": "the window W (None: none)", "soft_cap": "the logit soft-cap (None: none)",
              "scale": "the logit scale (default head_dim ** -0.5)", "k_scale": "fp8 cache's K scale",
              "v_scale": "fp8 cache's V scale", "loud_future": "inputs: each sequence's newest key is loud",
              "loud_logit": "inputs: the loud key's logit", "q_scale": "inputs: q is scaled by this",
              "sinks": "attention sinks: the logit the call's float32 per-head sinks are drawn around (None: none)"})


def _shape(seq_lens, heads, *, dtype="bfloat16", kv_dtype=None, block_size=16, **extra) -> dict:
    return dict(q_len=1, seq_len=list(seq_lens), num_seqs=len(seq_lens), block_size=block_size, dtype=dtype,
                kv_dtype=kv_dtype or dtype, **heads, **extra)


def build(shape: dict, device: str = "cpu", seed: int = 0) -> Inputs:
    from kernels.testing.paged import batch_for_shape  # deferred: the registry loads no torch

    b = batch_for_shape(shape, device, seed)
    return Inputs("paged_decode", shape, b.decode_args(), dict(b.kwargs), b)


def call(fn, inputs: Inputs) -> dict:
    from kernels.testing.paged import attention_call  # deferred: the registry loads no torch

    return attention_call(fn, inputs.data, decode=True)


def tolerance(inputs: Inputs, expected: dict) -> dict:
    from kernels.testing.paged import attention_tolerance  # deferred: the registry loads no torch

    return attention_tolerance(inputs.data, decode=True)


def empty_rows(inputs: Inputs, actual: dict) -> list:
    """A sequence with no key: out exactly 0 and LSE exactly -inf (never NaN); with sinks, LSE ``sinks[h]``
    (within the LSE tolerance: a kernel may hold the sink in base 2)."""
    import torch  # deferred: the registry loads no torch

    from kernels.testing.tolerances import lse_atol  # deferred: the registry loads no torch

    empty = (inputs.data.seq_lens == 0).cpu()
    if not bool(empty.any()):
        return []
    out = torch.as_tensor(actual["out"]).detach().cpu()  # the reference provider returns numpy
    ok = bool((out[empty] == 0).all())
    lse = actual["lse"]
    sinks = inputs.kwargs.get("sinks")
    judged, want = "out 0", "lse -inf" if sinks is None else "lse = sinks[h]"
    if not isinstance(lse, NotProvided):
        got = torch.as_tensor(lse).detach().cpu()[empty]
        if sinks is None:
            ok = ok and bool(torch.isneginf(got).all())
        else:
            sink = sinks.detach().cpu().double()
            atol = torch.as_tensor(lse_atol(str(inputs.args[0].dtype).replace("torch.", ""), sink.abs().numpy()))
            ok = ok and bool(((got.double() - sink).abs() <= atol).all())
        judged += ", " + want.replace("lse", "LSE")
    return [("empty rows", ok, f"paged_decode: a sequence with seq_len 0 must give out 0 and {want}; got "
             f"out {out[empty].flatten()[:4].tolist()}",
             f"empty ({int(empty.sum())} rows: {judged} as required)")]


def diagnose(inputs: Inputs, output: str, actual, expected, tol) -> str:
    """Where a failing output is wrong in the batch's terms, and which planted structure the errors follow."""
    from kernels.testing.diagnosis import attention  # deferred: the registry loads no torch

    return attention(inputs.data, True, output, actual, expected, tol)


def out_dtypes(inputs: Inputs) -> dict:
    import torch  # deferred: the registry loads no torch

    return {"out": inputs.args[0].dtype, "lse": torch.float32}


def draw(rng) -> dict:
    """A batch no check shape has: 10 to 16 sequences (one of them empty), 1 to 400 keys each, at a small GQA
    layout (a kernel that computes only the batch's front sequences, or only short ones, fails here)."""
    lens = [rng.randint(1, 400) for _ in range(rng.randint(10, 16))]
    lens[rng.randrange(len(lens))] = 0
    return _shape(lens, dict(num_q_heads=8, num_kv_heads=2, head_dim=64), loud_future=True, loud_logit=6.0)


def features(args, kwargs) -> set:
    from kernels.testing.paged import attention_features  # deferred: the registry loads no torch

    return attention_features(args, kwargs)


def _arg(args, kwargs, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


def hints(args, kwargs) -> dict:
    """``max_seq_len`` for a ``validate=False`` call: the true maximum of ``seq_lens`` (read on the host here, once,
    before any timing; the launch then reads nothing). A caller that already passes it keeps its own."""
    if "max_seq_len" in kwargs:
        return {}
    seq_lens = _arg(args, kwargs, 4, "seq_lens")
    return {"max_seq_len": int(seq_lens.max()) if seq_lens.numel() else 0}


def cost(shape: dict):
    return C.paged_decode(shape["seq_len"], num_q_heads=shape["num_q_heads"], num_kv_heads=shape["num_kv_heads"],
                          head_dim=shape["head_dim"], block_size=shape["block_size"], dtype=shape["dtype"],
                          kv_dtype=shape["kv_dtype"], sliding_window=shape.get("sliding_window"),
                          sinks=shape.get("sinks") is not None)


# counted at full size with every context capped at this many tokens (``medium_shape``; the batch, hence the
# split plan, is kept): per-program overheads only shrink with length, so the counted / minimum ratio carries over
DECODE_CTX_CAP = 2048


def medium_shape(shape: dict) -> dict | None:
    """The shape with its contexts scaled down so the longest is ``DECODE_CTX_CAP``, or None when none is longer."""
    if max(shape["seq_len"]) <= DECODE_CTX_CAP:
        return None
    f = DECODE_CTX_CAP / max(shape["seq_len"])
    return dict(shape, seq_len=[max(1, int(n * f)) for n in shape["seq_len"]])


def full_inputs(shape: dict, big, stride0: bool) -> tuple[tuple, dict]:
    from kernels.testing.paged import full_attention_inputs  # deferred: the registry loads no torch

    return full_attention_inputs(shape, big, decode=True)


def programs_note(shape: dict) -> str | None:
    """A decode of one sequence: the report lists the programs its split-KV plan launches at full size."""
    return "Split-KV decode of one long sequence" if shape["num_seqs"] == 1 else None


def row_shape(shape: dict) -> dict:
    from kernels.testing.paged import attention_row_shape  # deferred: the registry loads no torch

    return attention_row_shape(shape)


def launch_case(device, kv_dtype=None, sinks=False) -> tuple[tuple, dict, dict]:
    from kernels.testing.paged import launch_case as attention_launch_case  # deferred: the registry loads no torch

    return attention_launch_case(True, device, kv_dtype, sinks)


def decode_case(tag, batch, ctx, heads, *, kv_dtype=None, quick=False, model="llama3-8b", **extra) -> Case:
    """A catalogue decode case: ``batch`` ragged contexts up to ``ctx``; its small shape at most 2 sequences of
    at most 512 tokens (``extra``: window, sinks, in both). Batch x keys read (the window's, if shorter) >= 16k
    tokens states the bandwidth goal."""
    full = attention_shape(ragged_lens(batch, ctx), 1, kv_dtype=kv_dtype, **heads, **extra)
    small_ctx = min(ctx, 512)
    small = attention_shape(ragged_lens(min(batch, 2), small_ctx, seed=1), 1, kv_dtype=kv_dtype, **heads, **extra)
    goal = "decode_bw" if batch * min(ctx, extra.get("sliding_window") or ctx) >= 16384 else ""
    return Case("paged_decode", f"{model}/decode/{tag}", full, small, quick, goal)


def cases() -> list:
    L8 = LLAMA3_8B
    out = [
        decode_case("b1-ctx1k", 1, 1024, L8),
        decode_case("b1-ctx8k", 1, 8192, L8, quick=True),
        decode_case("b1-ctx32k", 1, 32768, L8),
        decode_case("b64-ctx1k", 64, 1024, L8),
        decode_case("b64-ctx4k", 64, 4096, L8, quick=True),
        decode_case("b64-ctx32k", 64, 32768, L8),
        decode_case("b64-ctx4k-fp8kv", 64, 4096, L8, kv_dtype="float8_e4m3fn"),
        decode_case("b32-ctx8k", 32, 8192, LLAMA3_70B, model="llama3-70b"),
        # Gemma-2-like local layer: window shorter than the context and logits far past the soft-cap at the
        # counted shape (and a loud newest key), so a kernel that ignores either fails the report's parity
        Case("paged_decode", "gemma2-9b/decode/b16-ctx8k-window4k-cap50",
             attention_shape(ragged_lens(16, 8192), 1, **GEMMA2_LIKE, sliding_window=4096, soft_cap=50.0),
             attention_shape(ragged_lens(2, 512, seed=1), 1, **GEMMA2_LIKE, sliding_window=128, soft_cap=50.0,
                   loud_future=True, loud_logit=6.0, q_scale=20.0)),
        # gpt-oss-120b: a sink per query head on every layer, a 128-token window on every other one
        decode_case("b64-ctx4k-window128-sinks", 64, 4096, GPT_OSS_120B_ATTN, model="gpt-oss-120b",
                    sliding_window=GPT_OSS_WINDOW, sinks=5.0),
        decode_case("b64-ctx4k-sinks", 64, 4096, GPT_OSS_120B_ATTN, model="gpt-oss-120b", sinks=6.0),
    ]
    for c in out:  # asv tracks the fp8 cache, the 70B layout and gpt-oss's sinks besides the quick cases
        c.tracked = c.name.endswith(("b64-ctx4k-fp8kv", "b32-ctx8k", "window128-sinks"))
    for c in out:  # the traffic goal is stated for the GQA 32/8 x 128 layout
        if c.shape["num_q_heads"] == 32 and c.shape["num_kv_heads"] == 8 and c.shape["head_dim"] == 128:
            c.goal = (c.goal + ",decode_traffic").strip(",")
    return out


def plan(gpu) -> dict:
    """The split plan's keywords for ``gpu``: its SM count, and the programs per SM that cover its memory latency
    (``roofline.timing_model.latency_blocks`` at the split kernel's 4 warps and resident blocks)."""
    # deferred: the registry loads no torch
    from kernels.triton.ops.paged_decode import DECODE_RESIDENT_BLOCKS, DECODE_WARPS

    return {"num_sms": gpu.sms, "blocks_per_sm": latency_blocks(gpu, DECODE_WARPS, DECODE_RESIDENT_BLOCKS)}


INVARIANCE = "kernels.testing.invariance"

SPEC = OpSpec(
    name="paged_decode",
    summary="split-KV decode over a paged cache (GQA, window, soft-cap, fp8 cache)",
    reference="kernels.reference.attention:paged_decode",
    kernel="kernels.triton.ops.paged_decode:paged_decode",
    torch="kernels.torch_eager:paged_decode",
    outputs=("out", "lse"),
    build=build, call=call, tolerance=tolerance, cost=cost, cases=cases, features=features, shape=ATTENTION_SHAPE,
    extra_checks=empty_rows, hints=hints, out_dtypes=out_dtypes, draw=draw, diagnose=diagnose,
    keywords={"scale": "", "sliding_window": "", "soft_cap": "", "k_scale": "", "v_scale": "", "sinks": "",
              "return_lse": "selects the outputs (every check case asks for the LSE)",
              "batch_invariant": "changes bits only, within tolerance (its own properties: test_invariance.py)",
              "num_splits": "partitioning only: the contract says the output must not depend on it",
              "split_size": "partitioning only: the contract says the output must not depend on it"},
    optional_keywords=("sinks",),
    check={
        "llama3-8b/decode-long-split-kv": _shape([6000], LLAMA3_8B, loud_future=True, loud_logit=8.0),
        "qwen2.5-7b/decode-ragged": _shape([1, 513, 77, 1024, 0, 31], QWEN25_7B, dtype="float16", loud_future=True,
                                             loud_logit=6.0),
        "gemma2-like/decode-window64-cap50": _shape([300, 65, 3], GEMMA2_LIKE, sliding_window=64, soft_cap=50.0,
                                                    loud_future=True, loud_logit=6.0, q_scale=20.0,
                                                    scale=144 ** -0.5),
        "llama3-8b/decode-fp8-cache": _shape([700, 1, 33], LLAMA3_8B, kv_dtype="float8_e4m3fn", k_scale=0.11,
                                             v_scale=0.07, loud_future=True, loud_logit=6.0),
        # sinks near the LSE (ignoring them moves nearly every row past its tolerance: the loud keys at
        # loud_logit 2, which a group of 8 query heads lifts to ~6, do not drown them); the window leaves key 0
        # (loud) outside; no split at a 128-key span
        "gpt-oss-120b/decode-window128-sinks": _shape([300, 129, 1, 77], GPT_OSS_120B_ATTN,
                                                      sliding_window=GPT_OSS_WINDOW, sinks=5.0, loud_future=True,
                                                      loud_logit=2.0),
        # 600 keys split in 5 partitions (a sink counted per partition is 5 sinks), through the fp8 cache; one
        # sequence (the merge runs a program per query head and 32 columns: the interpreter's cost)
        "gpt-oss-120b/decode-sinks-split-fp8-cache": _shape([600], GPT_OSS_120B_ATTN, kv_dtype="float8_e4m3fn",
                                                            k_scale=0.11, v_scale=0.07, sinks=6.0, loud_future=True,
                                                            loud_logit=2.0),
    },
    goals={"decode_traffic": (1.1, "paged_decode counted traffic within 1.1x of minimum bytes (GQA 32/8 x 128)"),
           "decode_bw": (0.9, "paged_decode at >= 90% of the GPU's HBM bandwidth for batch x context >= 16k "
                              "tokens")},
    full_size_count=True,
    count_cap=f"context <= {DECODE_CTX_CAP}",
    plan=plan,
    full_inputs=full_inputs, medium_shape=medium_shape, row_shape=row_shape, style=("o", "tab:blue"),
    programs_note=programs_note,
    invariance=(Invariance("paged_decode alone vs batch", f"{INVARIANCE}:decode_alone_vs_batch",
                           ("default", "split_size", "invariant"), ("split_size", "invariant")),),
    launch_cases={"": launch_case, "fp8": lambda device: launch_case(device, "float8_e4m3fn"),
                  "sinks": lambda device: launch_case(device, sinks=True)},
)
