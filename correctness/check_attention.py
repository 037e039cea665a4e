"""``servekernels check`` cases for the attention kernels: realistic head layouts, small batches and lengths.

Head counts and head dims are the models' own; batches and lengths are scaled down so the whole catalogue runs
in about a minute under the interpreter. Inputs come from ``correctness.inputs.make_paged_batch`` (ragged,
non-sequential block tables, NaN poison, loud future token) and tolerances from ``correctness.tolerances``,
exactly as in the parity tests.
"""
from __future__ import annotations

import time

from servekernels.check import Case, compare

# name -> (seq_lens, q_lens or None for decode, make_paged_batch kwargs)
LLAMA3_8B = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)
QWEN25_7B = dict(num_q_heads=28, num_kv_heads=4, head_dim=128)
GEMMA2_LIKE = dict(num_q_heads=16, num_kv_heads=8, head_dim=256)

PREFILL = {
    "llama3-8b/prefill-mixed": ([0, 1, 97, 300, 64], [0, 1, 97, 45, 1],
                                dict(LLAMA3_8B, block_size=16, dtype="bfloat16")),
    "qwen2.5-7b/prefill-chunked": ([260, 33, 129], [70, 33, 1], dict(QWEN25_7B, block_size=16, dtype="float16")),
    "gemma2-like/prefill-window64-cap50": ([300, 90], [120, 90], dict(GEMMA2_LIKE, block_size=16, dtype="bfloat16",
                                                                      sliding_window=64, soft_cap=50.0)),
    "llama3-8b/prefill-fp8-cache": ([150, 7, 64], [150, 1, 20],
                                    dict(LLAMA3_8B, block_size=16, dtype="bfloat16", kv_dtype="float8_e4m3fn",
                                         k_scale=0.11, v_scale=0.07)),
}
DECODE = {
    "llama3-8b/decode-long-split-kv": ([6000], dict(LLAMA3_8B, block_size=16, dtype="bfloat16")),
    "qwen2.5-7b/decode-ragged": ([1, 513, 77, 1024, 0, 31], dict(QWEN25_7B, block_size=16, dtype="float16")),
    "gemma2-like/decode-window64-cap50": ([300, 65, 3], dict(GEMMA2_LIKE, block_size=16, dtype="bfloat16",
                                                             sliding_window=64, soft_cap=50.0)),
}


def _device() -> str:
    from kernels.runtime import default_device

    return default_device()


def _attention_results(name, fn_kernel, fn_ref, batch, args):
    from correctness.tolerances import attention_out_atol, lse_atol

    dtype = str(batch.q.dtype).replace("torch.", "")
    label = dtype + ("/fp8 kv" if "k_scale" in batch.kwargs else "")
    started = time.perf_counter()
    out, lse = fn_kernel(*args, return_lse=True, **batch.kwargs)
    ref_out, ref_lse = fn_ref(*args, return_lse=True, **batch.kwargs)
    decode = fn_ref.__name__ == "paged_decode"
    return [compare(name, "out", label, out.cpu(), ref_out,
                    attention_out_atol(dtype, batch.out_magnitude(decode=decode)), started),
            compare(name, "lse", label, lse.cpu(), ref_lse,
                    lse_atol(dtype, batch.logit_max_per_query(decode=decode)), started)]


def _prefill_case(name, seq_lens, q_lens, kwargs):
    def run():
        from correctness.inputs import make_paged_batch
        from kernels import reference as R
        from kernels import triton as T

        batch = make_paged_batch(seq_lens, q_lens, loud_future=True, device=_device(), **kwargs)
        return _attention_results(name, T.paged_prefill, R.paged_prefill, batch, batch.prefill_args())

    return Case(name, run)


def _decode_case(name, seq_lens, kwargs):
    def run():
        from correctness.inputs import make_paged_batch
        from kernels import reference as R
        from kernels import triton as T

        # no loud token: a decode query may see it, and it would take all the weight (hiding every other key)
        batch = make_paged_batch(seq_lens, device=_device(), **kwargs)
        return _attention_results(name, T.paged_decode, R.paged_decode, batch, batch.decode_args())

    return Case(name, run)


def _merge_case(name="merge/4-partials-one-empty"):
    def run():
        import torch

        from correctness.tolerances import attention_out_atol, lse_atol
        from kernels import reference as R
        from kernels import triton as T

        gen = torch.Generator().manual_seed(1)
        outs = torch.randn((4, 24, 32, 128), generator=gen).to(_device(), torch.bfloat16)
        lses = (torch.randn((4, 24, 32), generator=gen) * 30).to(_device())
        lses[2, ::3] = float("-inf")  # empty partials: their outs are NaN and must be ignored
        outs[2, ::3] = float("nan")
        lses[:, 5, 7] = float("-inf")  # a (token, head) with no key at all: out 0, lse -inf
        started = time.perf_counter()
        out, lse = T.merge_states(outs, lses)
        ref_out, ref_lse = R.merge_states(outs, lses)
        # a convex combination of the partial outs: bounded by their finite max, like an attention output
        v_max = float(torch.nan_to_num(outs.float(), nan=0.0).abs().max())
        l_max = float(lses[torch.isfinite(lses)].abs().max())
        return [compare(name, "out", "bfloat16", out.cpu(), ref_out, attention_out_atol("bfloat16", v_max), started),
                compare(name, "lse", "float32", lse.cpu(), ref_lse, lse_atol("float32", l_max), started)]

    return Case(name, run)


def _write_kv_case(name, kv_dtype, key_dtype="bfloat16", layout="stacked"):
    """Llama-3-8B's KV heads (8 x 128): a decode step's worth of tokens scattered into a NaN cache, bitwise."""

    def run():
        import torch

        from correctness.inputs import torch_dtype
        from kernels import reference as R
        from kernels import triton as T

        gen = torch.Generator().manual_seed(2)
        num_blocks, block_size, tokens = 40, 16, 96
        shape = (num_blocks, block_size, 8, 128)
        nan = torch.full(shape, float("nan"))
        # built on the host; the reference scatters into host copies with the host slot_mapping, the kernel into
        # device copies (a device cache next to host slots would mix devices)
        kv_host = (torch.stack([nan, nan]) if layout == "stacked" else torch.stack([nan, nan], 1)).to(
            torch_dtype(kv_dtype))
        key_host = (torch.randn((tokens, 8, 128), generator=gen) * 40).to(torch_dtype(key_dtype))
        value_host = torch.randn((tokens, 8, 128), generator=gen).to(torch_dtype(key_dtype))
        slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
        slots[::7] = -1
        scales = dict(k_scale=0.2, v_scale=0.01) if kv_dtype == "float8_e4m3fn" else {}
        kv, ref_kv = kv_host.to(_device()), kv_host.clone()
        k_cache, v_cache = (kv[0], kv[1]) if layout == "stacked" else (kv[:, 0], kv[:, 1])
        ref_k, ref_v = (ref_kv[0], ref_kv[1]) if layout == "stacked" else (ref_kv[:, 0], ref_kv[:, 1])
        started = time.perf_counter()
        T.write_kv(key_host.to(_device()), value_host.to(_device()), k_cache, v_cache, slots.to(_device()),
                   **scales)
        R.write_kv(key_host, value_host, ref_k, ref_v, slots, **scales)
        label = f"{key_dtype}->{kv_dtype}" if kv_dtype != key_dtype else kv_dtype
        # a copy or one exact rounding onto the e4m3 grid: bitwise equal (NaN where nothing was written)
        return [compare(name, "k_cache", label, k_cache.cpu(), ref_k, 0.0, started),
                compare(name, "v_cache", label, v_cache.cpu(), ref_v, 0.0, started)]

    return Case(name, run)


def cases() -> list[Case]:
    out = [_prefill_case(n, s, q, kw) for n, (s, q, kw) in PREFILL.items()]
    out += [_decode_case(n, s, kw) for n, (s, kw) in DECODE.items()]
    out.append(_merge_case())
    out.append(_write_kv_case("llama3-8b/write_kv-fp8", "float8_e4m3fn"))
    out.append(_write_kv_case("llama3-8b/write_kv-bf16", "bfloat16", layout="interleaved"))
    return out
