"""The one adapter between the model and a kernel family.

``Backend("triton")`` calls ``kernels.triton``; ``Backend("reference")`` calls ``kernels.reference`` (same
signatures, float64 numpy results). Results come back here as torch tensors of the model's dtype, so no call
site in the model converts anything.

``batch_invariant=True`` makes every row of every step independent of the rest of the batch: each kernel gets
``batch_invariant=True``; attention always goes through ``paged_prefill`` (a decode is a one-token chunk, so a
token gets the same bits in an all-decode step as in a mixed one: ``paged_decode`` is another kernel with
other bits); and the dense projections go through ``grouped_gemm`` with one group (fixed tiles) instead of
torch's matmul, whose CPU and GPU libraries pick kernels by the number of rows.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import torch

BACKENDS = ("triton", "reference")


class Backend:
    def __init__(self, name: str, *, batch_invariant: bool = False) -> None:
        if name not in BACKENDS:
            raise ValueError(f"backend: must be one of {BACKENDS}, got {name!r}")
        self.name = name
        self.batch_invariant = batch_invariant
        self._inv = {"batch_invariant": True} if batch_invariant else {}
        self._package = importlib.import_module(f"kernels.{name}")
        self._fns: dict = {}

    def op(self, op: str):
        """The backend's function ``op`` (public names resolve lazily; no module shares a function's name, which
        ``correctness/test_public_api.py`` checks, so the package attribute is always the function)."""
        fn = self._fns.get(op)
        if fn is None:
            fn = self._fns[op] = getattr(self._package, op)
        return fn

    @staticmethod
    def _torch(x, dtype: torch.dtype, device) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        return x.to(device=device, dtype=dtype)

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping) -> None:
        self.op("write_kv")(key, value, k_cache, v_cache, slot_mapping)

    def attention(self, q: torch.Tensor, k_cache, v_cache, ctx) -> torch.Tensor:
        """``paged_decode`` when every scheduled request has one query, else ``paged_prefill`` (always
        ``paged_prefill`` with ``batch_invariant``)."""
        if ctx.is_decode and not self.batch_invariant:
            out = self.op("paged_decode")(q, k_cache, v_cache, ctx.block_table, ctx.seq_lens)
        else:
            out = self.op("paged_prefill")(q, k_cache, v_cache, ctx.block_table, ctx.seq_lens, ctx.query_start_loc,
                                           **self._inv)
        return self._torch(out, q.dtype, q.device)

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x @ w.T`` (``w`` ``[N, K]``): torch's matmul, or one-group ``grouped_gemm`` with ``batch_invariant``."""
        if not self.batch_invariant:
            return x @ w.T
        offsets = torch.tensor([0, x.shape[0]], dtype=torch.int32, device=x.device)
        y = self.op("grouped_gemm")(x.contiguous(), w.unsqueeze(0), offsets, out_dtype=x.dtype, **self._inv)
        return self._torch(y, x.dtype, x.device)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self._torch(self.op("rms_norm")(x, weight, eps=eps), x.dtype, x.device)

    def fused_add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> torch.Tensor:
        """``residual += x`` in place; the norm of the new residual."""
        return self._torch(self.op("fused_add_rms_norm")(x, residual, weight, eps=eps), x.dtype, x.device)

    def rotary_embedding(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> None:
        """NeoX RoPE of ``q`` and ``k`` in place."""
        self.op("rotary_embedding")(positions, q, k, cos_sin_cache, is_neox=True)

    def route(self, router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, weights = self.op("route")(router_logits, top_k)
        dev = router_logits.device
        return self._torch(ids, torch.int32, dev), self._torch(weights, torch.float32, dev)

    def sampler(self):
        """The backend's ``top_k_top_p_sample`` (the engine's sampler calls it with each request's noise)."""
        return self.op("top_k_top_p_sample")

    def fused_moe(self, x: torch.Tensor, w13, w2, topk_ids, topk_weights) -> torch.Tensor:
        return self._torch(self.op("fused_moe")(x, w13, w2, topk_ids, topk_weights, **self._inv), x.dtype, x.device)

    def quantize(self, w: torch.Tensor, kind: str | None):
        """An expert stack as the backend's ``Int4Weight`` / ``Fp8Weight`` (or unchanged for None)."""
        if kind is None:
            return w
        if kind == "int4":
            q = self.op("quantize_int4")(w, group_size=32)
        else:
            q = self.op("quantize_fp8")(w, granularity="block", block_size=(128, 128))
        return _to_device(q, w.device)


def _to_device(q, device):
    """A quantized weight (a frozen dataclass of tensors) with every tensor field on ``device``."""
    moved = {f.name: (v.to(device) if isinstance(v := getattr(q, f.name), torch.Tensor) else v)
             for f in dataclasses.fields(q)}
    return type(q)(**moved)
