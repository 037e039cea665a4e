"""Helpers shared by the asv benchmarks (imported lazily from setup, never at discovery)."""
from __future__ import annotations

# the catalogue cases asv tracks counted traffic for: the quick set plus every goal case (deterministic under
# the interpreter, so a traffic regression shows as a step in asv's graph of that case)
TRACKED_CASES = (
    "llama3-8b/decode/b1-ctx8k",
    "llama3-8b/decode/b64-ctx4k",
    "llama3-8b/decode/b64-ctx4k-fp8kv",
    "llama3-70b/decode/b32-ctx8k",
    "llama3-8b/prefill/full-2k",
    "llama3-8b/prefill/mixed-4seq",
    "llama3-8b/merge/decode-b64-s2",
    "llama3-8b/write_kv/decode-64",
    "llama3-8b/write_kv/prefill-2k-fp8",
    "mixtral/int4-w13/decode-t16",
    "mixtral/int4-w2/decode-t16",
    "mixtral/fp8-w13/decode-t16",
    "mixtral/bf16-w13/decode-t16",
    "mixtral/moe-int4/t16",
    "mixtral/moe-fp8/t16",
)
REFERENCE_OPS = ("paged_decode", "paged_prefill", "merge_states", "write_kv", "grouped_gemm", "grouped_gemm_int4",
                 "grouped_gemm_fp8", "fused_moe")


def interpreter_on() -> str:
    """Switch the Triton interpreter on when there is no GPU (before triton is imported)."""
    from kernels.runtime import configure_triton

    return configure_triton()


def case(name: str):
    from roofline.catalogue import catalogue

    for c in catalogue():
        if c.name == name:
            return c
    raise NotImplementedError(f"{name}: not in the catalogue of this commit")


def first_case(op: str):
    from roofline.catalogue import catalogue

    cases = [c for c in catalogue() if c.op == op]
    if not cases:
        raise NotImplementedError(f"{op}: no catalogue case in this commit")
    return next((c for c in cases if c.quick), cases[0])


def prepared(op: str, shape: dict, device: str):
    """``roofline.ops.prepare``, with a missing kernel or module turned into asv's skip."""
    from roofline import ops

    try:
        return ops.prepare(op, shape, device)
    except ops.Unavailable as exc:
        raise NotImplementedError(str(exc)) from exc
    except ModuleNotFoundError as exc:
        raise NotImplementedError(f"{op}: not available in this build ({exc})") from exc


def has_gpu() -> bool:
    from kernels.runtime import cuda_available, interpreter_enabled

    return cuda_available() and not interpreter_enabled()
