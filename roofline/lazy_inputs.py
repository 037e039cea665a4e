"""Inputs of a catalogue case's full shape that cost (almost) no memory: for grids and counting at model size."""
from __future__ import annotations

from kernels.ops import Case


def lazy_inputs(case: Case, stride0: bool = True):
    """Inputs of the case's shape that cost (almost) no memory.

    ``stride0=True``: caches, activations and weights are stride-0 expansions of one element (for grids only:
    every block aliases, so nothing may be executed on them). ``stride0=False``: real but uninitialised
    (``torch.empty``) tensors, touched only by the programs that run; for counting, where aliased addresses
    would merge into one transaction. Values are arbitrary: byte counts depend on addresses and masks only.
    """
    import numpy as np
    import torch

    from kernels.testing.paged import torch_dtype

    def big(shape, dtype):
        dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
        if not stride0:
            return torch.empty(shape, dtype=dtype)
        # every leading dim stride 0, the last one real (launchers require a contiguous last dim)
        return torch.zeros((1,) * (len(shape) - 1) + (shape[-1],), dtype=dtype).expand(*shape)

    s = case.shape
    if case.op in ("paged_decode", "paged_prefill"):
        bs, lens = s["block_size"], s["seq_len"]
        q_lens = [1] * len(lens) if s["q_len"] == 1 else s["q_len"]
        need = [-(-n // bs) for n in lens]
        nb = sum(need) + 1
        shape = (nb, bs, s["num_kv_heads"], s["head_dim"])
        k_cache, v_cache = big(shape, s["kv_dtype"]), big(shape, s["kv_dtype"])
        table = torch.zeros((len(lens), max(need)), dtype=torch.int32)
        start = 0
        for i, n in enumerate(need):
            table[i, :n] = torch.arange(start, start + n, dtype=torch.int32)
            start += n
        q = torch.zeros((sum(q_lens), s["num_q_heads"], s["head_dim"]), dtype=torch_dtype(s["dtype"]))
        seq_lens = torch.tensor(lens, dtype=torch.int32)
        kw = {"k_scale": 1.0, "v_scale": 1.0} if s["kv_dtype"] == "float8_e4m3fn" else {}
        kw.update({k: s[k] for k in ("sliding_window", "soft_cap") if s.get(k) is not None})
        if case.op == "paged_decode":
            return (q, k_cache, v_cache, table, seq_lens), kw
        qsl = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32)
        return (q, k_cache, v_cache, table, seq_lens, qsl), kw
    if case.op == "fused_moe":
        return _moe_inputs(s, big), {}
    t, n, k, e = s["tokens"], s["n"], s["k"], s["experts"]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(s["group_sizes"])]), dtype=torch.int32)
    if case.op == "grouped_gemm":
        return (big((t, k), torch.bfloat16), big((e, n, k), torch.bfloat16), offsets), {}
    if case.op == "grouped_gemm_int4":
        g = s["group_size"]
        w = _weight_class("Int4Weight")(big((e, n, k // 2), torch.uint8),
                                        torch.ones((1, 1, 1), dtype=torch.float32).expand(e, n, k // g)
                                        if stride0 else torch.ones((e, n, k // g)), None, g)
        return (big((t, k), torch.bfloat16), w, offsets), {}
    w = _weight_class("Fp8Weight")(big((e, n, k), torch.float8_e4m3fn),
                                   torch.ones((e, -(-n // 128), -(-k // 128)), dtype=torch.float32), "block",
                                   (128, 128))
    scales = torch.ones((t, -(-k // s["group_size"])), dtype=torch.float32)
    return (big((t, k), torch.float8_e4m3fn), scales, w, offsets), {"out_dtype": torch.bfloat16}


def _weight_class(name: str):
    import kernels.triton

    return getattr(kernels.triton, name)


def _moe_inputs(s: dict, big):
    """``fused_moe`` at full size: real activations and routing (the catalogue's skewed router), weights built
    by ``big`` (stride 0: nothing may execute the expert GEMMs on them)."""
    import torch

    from roofline.ops import routing

    t, h, inter, e, k = s["tokens"], s["hidden"], s["intermediate"], s["experts"], s["top_k"]
    ids, wts = routing(t, e, k)
    x = torch.zeros((t, h), dtype=torch.bfloat16)

    def weight(n, kk):
        if s["weight_format"] == "int4":
            g = s["group_size"]
            return _weight_class("Int4Weight")(big((e, n, kk // 2), torch.uint8),
                                               big((e, n, kk // g), torch.float32), None, g)
        if s["weight_format"] == "fp8":
            return _weight_class("Fp8Weight")(big((e, n, kk), torch.float8_e4m3fn),
                                              big((e, -(-n // 128), -(-kk // 128)), torch.float32), "block",
                                              (128, 128))
        return big((e, n, kk), torch.bfloat16)

    return x, weight(2 * inter, h), weight(h, inter), torch.from_numpy(ids), torch.from_numpy(wts)
