"""MLA decode inputs that make masking, scale and layout bugs explode (``kernels/ops/mla_decode.py``).

As ``kernels.testing.paged``: ragged lengths (0 included), random non-sequential block tables from a pool with
spare blocks, NaN in every slot no sequence owns (both caches), block-table entries past a sequence's last block
-1 or an id outside the cache, signed Gaussian values. A *loud* newest key: its rope part ``k_pe`` is aligned
with the sequence's ``q_pe`` rows at logit ~``loud_logit`` (a kernel that drops the newest key, or ``q_pe``,
is far off; with several queries per sequence only the last may hear it). ``layout="fused"`` stores both parts
in one ``[num_blocks, block_size, R + P]`` tensor (vLLM's) and passes its two slices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.ops import NotProvided, Unsupported
from kernels.reference import attention as RA
from kernels.reference._arrays import f64
from kernels.reference.fp8 import round_to_e4m3
from kernels.testing.paged import torch_dtype
from kernels.testing.tolerances import attention_out_atol, lse_atol


@dataclass
class MlaBatch:
    q_nope: torch.Tensor
    q_pe: torch.Tensor
    kv_c_cache: torch.Tensor
    k_pe_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor | None  # None: one query per sequence
    kwargs: dict = field(default_factory=dict)  # scale, kv_scale (fp8), query_start_loc (multi-token)

    def args(self) -> tuple:
        return (self.q_nope, self.q_pe, self.kv_c_cache, self.k_pe_cache, self.block_table, self.seq_lens)

    def call_kwargs(self) -> dict:
        kw = dict(self.kwargs)
        if self.query_start_loc is not None:
            kw["query_start_loc"] = self.query_start_loc
        return kw

    def qsl(self) -> np.ndarray:
        if self.query_start_loc is None:
            return np.arange(len(self.seq_lens) + 1)
        return self.query_start_loc.cpu().numpy().astype(np.int64)

    def scales(self):
        """Per element of the output ``sum_t p_t |c_t|`` (the reference run on |c|: every rounding of the output
        is relative to it) and per (token, head) the largest visible |logit| and the float32 dot-product bound
        ``(R + P) u32 scale |q| max |k|`` (the logits' own rounding: R + P = 576 terms, past the 256 of the
        GQA tolerances)."""
        q = np.concatenate([f64(self.q_nope), f64(self.q_pe)], axis=-1)
        scale, kv_scale = self.kwargs["scale"], float(self.kwargs.get("kv_scale", 1.0))
        mag = np.zeros(self.q_nope.shape)
        lmax = np.zeros(q.shape[:2])
        dot = np.zeros(q.shape[:2])
        qsl, bt = self.qsl(), self.block_table.cpu().numpy()
        for i, n in enumerate(self.seq_lens.cpu().numpy()):
            lo, hi = qsl[i], qsl[i + 1]
            if hi == lo or n == 0:
                continue
            c, kp = RA.gather_kv(self.kv_c_cache[:, :, None], self.k_pe_cache[:, :, None], bt[i], int(n),
                                 k_scale=kv_scale, v_scale=kv_scale)
            k = np.concatenate([c, kp], axis=-1)
            s, mask = RA.attention_logits(q[lo:hi], k, n - (hi - lo) + np.arange(hi - lo), scale=scale)
            lmax[lo:hi] = np.where(mask, np.abs(s), 0.0).max(axis=-1).T
            mag[lo:hi] = RA.softmax_combine(s, mask, np.abs(c))[0]
            knorm = float(np.nanmax(np.linalg.norm(k[:, 0], axis=-1)))
            dot[lo:hi] = q.shape[-1] * 2.0 ** -24 * scale * np.linalg.norm(q[lo:hi], axis=-1) * knorm
        return mag, lmax, dot


def make_mla_batch(seq_lens, q_lens=None, *, num_heads: int, rank: int, rope: int, block_size: int,
                   dtype="bfloat16", kv_dtype=None, scale=None, kv_scale: float = 1.0, seed: int = 0,
                   device="cpu", loud_future: bool = False, loud_logit: float = 6.0, layout: str = "separate",
                   spare_blocks: int | None = None, poison: bool = True) -> MlaBatch:
    """A ragged poisoned MLA batch. ``q_lens=None``: decode (one query per sequence, no ``query_start_loc``);
    else a list (``query_start_loc`` is passed). ``scale`` defaults to DeepSeek-V3's ``1 / sqrt(128 + 64)``."""
    rng = np.random.default_rng(seed)
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    multi = q_lens is not None
    q_lens = np.asarray(q_lens if multi else np.ones_like(seq_lens), dtype=np.int64)
    if (q_lens > seq_lens).any() and multi:
        raise ValueError("q_lens: more queries than keys")
    scale = 192 ** -0.5 if scale is None else scale
    need = -(-seq_lens // block_size)
    num_blocks = int(need.sum()) + (spare_blocks if spare_blocks is not None else 2 + int(need.sum()) // 4)
    pool = rng.permutation(num_blocks)
    table = np.empty((len(seq_lens), max(int(need.max(initial=0)) + 2, 1)), dtype=np.int64)
    table[:] = np.where(np.arange(table.shape[1]) % 2 == 0, -1, num_blocks + 1000)[None, :]
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = pool[start:start + n]
        start += n
    fill = np.nan if poison else 0.0
    c64 = np.full((num_blocks, block_size, rank), fill)
    pe64 = np.full((num_blocks, block_size, rope), fill)
    qsl = np.concatenate([[0], np.cumsum(q_lens)])
    qn = rng.standard_normal((int(qsl[-1]), num_heads, rank))
    qp = rng.standard_normal((int(qsl[-1]), num_heads, rope))
    for i, n in enumerate(seq_lens):
        if n == 0:
            continue
        c = rng.standard_normal((n, rank))
        kp = rng.standard_normal((n, rope))
        if loud_future and n > 1 and qsl[i + 1] > qsl[i]:
            qs = qp[qsl[i]:qsl[i + 1]].reshape(-1, rope)
            d = qs.mean(axis=0)
            d /= np.linalg.norm(d) + 1e-12
            qp[qsl[i]:qsl[i + 1]] += 2.0 * d  # q_pe . d ~ N(2, 1): the newest key's logit ~ loud_logit
            kp[n - 1] = d * (loud_logit / (2.0 * scale))
        slots = table[i, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
        c64.reshape(-1, rank)[slots] = c / kv_scale
        pe64.reshape(-1, rope)[slots] = kp / kv_scale
    kv_t = torch_dtype(kv_dtype or dtype)
    if kv_t == torch.float8_e4m3fn:
        c64, pe64 = round_to_e4m3(c64), round_to_e4m3(pe64)
    if layout == "fused":
        both = torch.from_numpy(np.concatenate([c64, pe64], axis=-1)).to(device, kv_t)
        kv_c, k_pe = both[..., :rank], both[..., rank:]
    elif layout == "separate":
        kv_c, k_pe = torch.from_numpy(c64).to(device, kv_t), torch.from_numpy(pe64).to(device, kv_t)
    else:
        raise ValueError(f"layout: unknown {layout!r}")
    kwargs = {"scale": scale}
    if kv_t == torch.float8_e4m3fn:
        kwargs["kv_scale"] = kv_scale
    qd = torch_dtype(dtype)
    return MlaBatch(torch.from_numpy(qn).to(device, qd), torch.from_numpy(qp).to(device, qd),
                    kv_c, k_pe, torch.from_numpy(table).to(device, torch.int32),
                    torch.from_numpy(seq_lens).to(device, torch.int32),
                    torch.from_numpy(qsl).to(device, torch.int32) if multi else None, kwargs)


def batch_for_shape(shape: dict, device="cpu", seed: int = 0) -> MlaBatch:
    """The batch of a named ``mla_decode`` shape (``kernels/ops/mla_decode.py``)."""
    return make_mla_batch(shape["seq_len"], None if shape["q_len"] == 1 else shape["q_len"],
                          num_heads=shape["num_heads"], rank=shape["rank"], rope=shape["rope"],
                          block_size=shape["block_size"], dtype=shape["dtype"], kv_dtype=shape["kv_dtype"],
                          scale=shape["scale"], kv_scale=shape.get("kv_scale", 1.0), seed=seed, device=device,
                          loud_future=shape.get("loud_future", False), loud_logit=shape.get("loud_logit", 6.0),
                          layout=shape.get("layout", "separate"))


def mla_call(fn, batch: MlaBatch) -> dict:
    """``{"out", "lse"}`` of any implementation; one that cannot return the LSE raises
    ``Unsupported("return_lse: ...")`` and its ``out`` is still judged."""
    try:
        out, lse = fn(*batch.args(), return_lse=True, **batch.call_kwargs())
    except Unsupported as exc:
        if not str(exc).startswith("return_lse"):
            raise
        return {"out": fn(*batch.args(), **batch.call_kwargs()), "lse": NotProvided(str(exc))}
    return {"out": out, "lse": lse}


def mla_tolerance(batch: MlaBatch) -> dict:
    """Per element. out: ``attention_out_atol`` of ``sum_t p_t |c_t|`` (the softmax weights' cast, the output's
    cast, float32 accumulation), plus the logits' float32 dot-product bound ``d`` moving every weight by up to
    ``d`` relative, hence the output by up to ``2 d`` of the same magnitude. lse: ``lse_atol`` of the row's
    largest visible |logit|, plus ``d``."""
    dtype = str(batch.q_nope.dtype).replace("torch.", "")
    mag, lmax, dot = batch.scales()
    return {"out": attention_out_atol(dtype, mag) + 2 * dot[..., None] * mag, "lse": lse_atol(dtype, lmax) + dot}


def mla_features(args, kwargs) -> set:
    """What a provider may decline: ``fp8_kv``, ``multi_token``, ``rank=<R>``, ``rope=<P>``, ``dtype=<name>``,
    ``batch_invariant``, ``split_control``."""
    q_nope, q_pe, kv_c = args[0], args[1], args[2]
    feats = {f"rank={q_nope.shape[-1]}", f"rope={q_pe.shape[-1]}", f"dtype={str(q_nope.dtype).replace('torch.', '')}"}
    if "float8" in str(kv_c.dtype):
        feats.add("fp8_kv")
    if kwargs.get("query_start_loc") is not None:
        feats.add("multi_token")
    if kwargs.get("batch_invariant"):
        feats.add("batch_invariant")
    if kwargs.get("num_splits") is not None or kwargs.get("split_size") is not None:
        feats.add("split_control")
    return feats

