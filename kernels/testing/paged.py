"""Paged-attention inputs that make masking bugs explode.

- Ragged lengths, random *non-sequential* block tables drawn from a shared pool with spare blocks.
- Every slot a sequence does not own (the tail of its last block, spare blocks) holds NaN; block-table entries
  past a sequence's last block hold -1 or an out-of-range id. A kernel that reads any of it produces NaN.
- Optionally a *loud future token*: the last key of each sequence is aligned with that sequence's queries so
  strongly that any query that wrongly sees it is dominated by it (only the last query may hear it), and with
  a sliding window a loud *past* token (the first key) that windowed queries must not hear.
- Values are signed Gaussians (not all-positive ``rand``), so cancellations are exercised.
- Optionally attention sinks (``sink_logit``): one float32 logit per query head, drawn around the batch's typical
  LSE so that a kernel that drops the sink, or counts it once per KV split, is far off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kernels import reference as R
from kernels.ops import NotProvided, Unsupported
from kernels.reference._arrays import f64
from kernels.reference.fp8 import round_to_e4m3
from kernels.testing.tolerances import attention_out_atol, lse_atol

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,
}

LOUD_LOGIT = 24.0  # e**24 ~ 2.6e10: a leaked loud token takes all but 1e-10 of the softmax weight


def torch_dtype(name) -> torch.dtype:
    return name if isinstance(name, torch.dtype) else TORCH_DTYPES[name]


@dataclass
class PagedBatch:
    """One paged-attention call's inputs. ``attn_args()``/``attn_kwargs()`` feed kernel and reference alike."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    kwargs: dict = field(default_factory=dict)
    loud: bool = False  # the newest key of each sequence (and with a window key 0) is loud (``loud_future``)

    @property
    def q_lens(self) -> np.ndarray:
        return np.diff(self.query_start_loc.cpu().numpy())

    def prefill_args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_table, self.seq_lens, self.query_start_loc)

    def decode_args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_table, self.seq_lens)

    def v_max(self) -> float:
        """max |V| over the slots sequences own (dequantized), the scale of every attention output."""
        return _owned_max(self, self.v_cache, self.kwargs.get("v_scale", 1.0))

    def logit_max(self) -> float:
        """Upper bound of |scale * q.k| over owned keys (Cauchy-Schwarz), capped by ``soft_cap``, for LSE tolerances.

        With a soft-cap an error ``d`` in the raw logit ``s`` moves the capped logit by ``d * sech^2(s / cap)``; for
        ``d ~ u * |s|`` that is ``u * cap * x sech^2(x)`` with ``x sech^2(x) <= 0.45``: bounded by ``u * cap``.
        """
        qn = float(self.q.double().norm(dim=-1).max()) if self.q.numel() else 0.0
        kn = _owned_max(self, self.k_cache, self.kwargs.get("k_scale", 1.0), norm=True)
        scale = self.kwargs.get("scale") or self.q.shape[-1] ** -0.5
        s = scale * qn * kn
        cap = self.kwargs.get("soft_cap")
        return min(s, cap) if cap else s

    def attention_scales(self, decode: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The two scales of the attention tolerances, from one pass over each sequence's keys:

        - ``magnitude`` ``[num_tokens, num_q_heads, head_dim]``: per output element ``sum_i p_i |v_i|``, the
          reference attention run on |V|. Every rounding in an attention kernel is relative to it, so it is the
          sharpest scale for ``attention_out_atol``;
        - ``logit_max`` ``[num_tokens, num_q_heads]``: max |logit| over the keys each query sees (soft-capped),
          for ``lse_atol``.

        The logits are computed once (``R.attention.attention_logits``, as the reference does), then their
        visible max and the softmax-weighted |V| (``softmax_combine`` on |V|, NaN poison kept). A full-size report case pays for
        one extra attention here, not two.

        With sinks the weights ``p_i`` are the sink's softmax (its denominator holds ``exp(sinks[h])``), which every
        rounding of ``P @ V`` is still relative to; the sink itself is an exact float32 logit, rounded once when a
        kernel holds it in base 2 (``sinks[h] * log2(e)``, relative 2**-24), so ``logit_max`` takes ``|sinks[h]|``
        too (a query with no key has the sink as its LSE)."""
        kw = self.kwargs
        sinks = kw.get("sinks")
        q = f64(self.q)
        mag = np.zeros(q.shape)
        lmax = np.zeros(q.shape[:2])
        scale = kw.get("scale") or q.shape[-1] ** -0.5
        qsl = np.arange(len(self.seq_lens) + 1) if decode else self.query_start_loc.cpu().numpy()
        bt = self.block_table.cpu().numpy()
        for i, n in enumerate(self.seq_lens.cpu().numpy()):
            lo, hi = qsl[i], qsl[i + 1]
            if hi == lo or n == 0:
                continue  # no query, or no key: out 0, so its magnitude is 0
            k, v = R.gather_kv(self.k_cache, self.v_cache, bt[i], int(n), k_scale=kw.get("k_scale", 1.0),
                               v_scale=kw.get("v_scale", 1.0))
            s, mask = R.attention.attention_logits(q[lo:hi], k, n - (hi - lo) + np.arange(hi - lo), scale=scale,
                                                   sliding_window=kw.get("sliding_window"),
                                                   soft_cap=kw.get("soft_cap"))
            lmax[lo:hi] = np.where(mask, np.abs(s), 0.0).max(axis=-1).T
            mag[lo:hi] = R.attention.softmax_combine(s, mask, np.abs(v), sinks)[0]
        if sinks is not None:  # the LSE's own logit: a sink larger than every key logit sets its scale
            sink = np.abs(f64(sinks))
            lmax = np.maximum(lmax, np.where(np.isfinite(sink), sink, 0.0)[None, :])
        return mag, lmax


def _host_scale(s) -> float:
    return float(s.reshape(-1)[0]) if isinstance(s, torch.Tensor) else float(s)


def _owned_max(batch: PagedBatch, cache, cache_scale, norm=False) -> float:
    bt, sl = batch.block_table.cpu().numpy(), batch.seq_lens.cpu().numpy()
    bs = cache.shape[1]
    best = 0.0
    for i, n in enumerate(sl):
        if n == 0:
            continue
        blocks = torch.as_tensor(bt[i, : -(-n // bs)].astype(np.int64), device=cache.device)
        vals = cache[blocks].double().reshape(-1, *cache.shape[2:])[:n] * float(cache_scale)
        best = max(best, float(vals.norm(dim=-1).max() if norm else vals.abs().max()))
    return best


def make_paged_batch(seq_lens, q_lens=None, *, num_q_heads: int, num_kv_heads: int, head_dim: int,
                     block_size: int, dtype="float16", kv_dtype=None, seed: int = 0, device="cpu",
                     spare_blocks: int | None = None, poison: bool = True, loud_future: bool = False,
                     layout: str = "separate", k_scale: float = 1.0, v_scale: float = 1.0,
                     extra_table_cols: int = 2, q_scale: float = 1.0, loud_logit: float = LOUD_LOGIT,
                     sink_logit: float | None = None, **kwargs) -> PagedBatch:
    """Build a ragged paged batch. ``q_lens=None`` means decode (one query per sequence).

    ``layout``: "separate" (two caches), "stacked" (``kv[0]``, ``kv[1]`` of one ``[2, num_blocks, ...]``
    tensor) or "interleaved" (``kv[:, 0]``, ``kv[:, 1]`` of ``[num_blocks, 2, ...]``: a non-contiguous block
    stride). ``kwargs`` (scale, sliding_window, soft_cap) are stored for the call. ``loud_future``: the newest
    key of every sequence (the future token of every query but the last; the newest key a decode query sees)
    is aligned with its queries at logit ~LOUD_LOGIT, and with a sliding window key 0 too: a kernel that drops
    the newest key, or leaks a masked one, is far off. ``q_scale`` multiplies the queries (after the loud keys
    are placed): logits scale with it, e.g. far past a ``soft_cap`` so that ignoring the cap shows.
    ``loud_logit``: how loud (a decode's newest key at ~6 takes a large share of the weight without hiding
    every other key, so split and mask bugs still show too). ``sink_logit``: attention sinks, float32
    ``[num_q_heads]`` in ``kwargs["sinks"]``, drawn uniformly within +-1.5 of it (``draw_sinks``); None: none.
    """
    rng = np.random.default_rng(seed)
    seq_lens = np.asarray(seq_lens, dtype=np.int64)
    decode = q_lens is None
    q_lens = np.ones_like(seq_lens) if decode else np.asarray(q_lens, dtype=np.int64)
    if (q_lens > seq_lens).any() and not decode:
        raise ValueError("q_lens: a chunk cannot be longer than its sequence")
    dtype, kv_dtype = torch_dtype(dtype), torch_dtype(kv_dtype or dtype)
    need = -(-seq_lens // block_size)
    spare = spare_blocks if spare_blocks is not None else 2 + int(need.sum()) // 4
    num_blocks = int(need.sum()) + spare
    pool = rng.permutation(num_blocks)
    max_blocks = int(need.max(initial=0)) + extra_table_cols
    table = np.empty((len(seq_lens), max(max_blocks, 1)), dtype=np.int64)
    # past each sequence's last block: -1 or an id far outside the cache, alternating
    table[:] = np.where(np.arange(table.shape[1]) % 2 == 0, -1, num_blocks + 1000)[None, :]
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = pool[start:start + n]
        start += n

    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k64 = np.full(shape, np.nan if poison else 0.0)
    v64 = np.full(shape, np.nan if poison else 0.0)
    num_tokens = int(q_lens.sum())
    q64 = rng.standard_normal((num_tokens, num_q_heads, head_dim))
    qsl = np.concatenate([[0], np.cumsum(q_lens)])
    group = num_q_heads // num_kv_heads
    scale = kwargs.get("scale") or head_dim ** -0.5
    for i, n in enumerate(seq_lens):
        if n == 0:
            continue
        k_seq = rng.standard_normal((n, num_kv_heads, head_dim))
        v_seq = rng.standard_normal((n, num_kv_heads, head_dim))
        if loud_future and n > 1:
            _make_loud(k_seq, q64[qsl[i]:qsl[i + 1]], n - 1, group, scale, rng, loud_logit)
            if kwargs.get("sliding_window"):
                _make_loud(k_seq, q64[qsl[i]:qsl[i + 1]], 0, group, scale, rng, loud_logit)
        slots = table[i, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
        k64.reshape(-1, num_kv_heads, head_dim)[slots] = k_seq / k_scale
        v64.reshape(-1, num_kv_heads, head_dim)[slots] = v_seq / v_scale
    if kv_dtype == torch.float8_e4m3fn:
        k64, v64 = round_to_e4m3(k64), round_to_e4m3(v64)
    q64 = q64 * q_scale
    k_cache, v_cache = _lay_out(torch.from_numpy(k64), torch.from_numpy(v64), kv_dtype, layout, device)
    kwargs = dict(kwargs)
    if kv_dtype == torch.float8_e4m3fn:
        kwargs.update(k_scale=k_scale, v_scale=v_scale)
    if sink_logit is not None:
        kwargs["sinks"] = draw_sinks(num_q_heads, sink_logit, seed, device)
    return PagedBatch(
        q=torch.from_numpy(q64).to(device, dtype),
        k_cache=k_cache,
        v_cache=v_cache,
        block_table=torch.from_numpy(table).to(device, torch.int32),
        seq_lens=torch.from_numpy(seq_lens).to(device, torch.int32),
        query_start_loc=torch.from_numpy(qsl).to(device, torch.int32),
        kwargs=kwargs,
        loud=loud_future,
    )


def draw_sinks(num_q_heads: int, sink_logit: float, seed: int = 0, device="cpu") -> torch.Tensor:
    """float32 ``[num_q_heads]`` sinks uniform in ``sink_logit +- 1.5``, from their own stream (``seed``), so a
    batch's other inputs are the same with and without them. Near the batch's LSE a sink takes a good share of
    every softmax (half at equality): dropping it, or counting it twice, moves every output."""
    rng = np.random.default_rng([seed, 24])
    return torch.from_numpy(sink_logit + rng.uniform(-1.5, 1.5, num_q_heads)).to(device, torch.float32)


def _make_loud(k_seq, q_seq, pos, group, scale, rng, loud_logit: float = LOUD_LOGIT) -> None:
    """Align key ``pos`` with the mean query direction of each KV head's group, at logit ~``loud_logit``."""
    for h in range(k_seq.shape[1]):
        qs = q_seq[:, h * group:(h + 1) * group].reshape(-1, q_seq.shape[-1])
        direction = qs.mean(axis=0) if len(qs) else rng.standard_normal(q_seq.shape[-1])
        direction /= np.linalg.norm(direction) + 1e-12
        # q . direction is ~N(0, 1) for a Gaussian q: lift it to ~N(2, 1), so the logit is ~LOUD_LOGIT
        q_seq[:, h * group:(h + 1) * group] += 2.0 * direction
        k_seq[pos, h] = direction * (loud_logit / (2.0 * scale))


def _lay_out(k64: torch.Tensor, v64: torch.Tensor, dtype, layout: str, device):
    if layout == "separate":
        return k64.to(device, dtype), v64.to(device, dtype)
    if layout == "stacked":
        kv = torch.stack([k64, v64]).to(device, dtype)
        return kv[0], kv[1]
    if layout == "interleaved":
        kv = torch.stack([k64, v64], dim=1).to(device, dtype)
        return kv[:, 0], kv[:, 1]
    raise ValueError(f"layout: unknown {layout!r}")


# ------------------------------------------------------------------------------------- named shapes (registry)

# shape keys that become the call's keywords (the rest describe the batch)
CALL_KEYS = ("scale", "sliding_window", "soft_cap")


def batch_for_shape(shape: dict, device: str = "cpu", seed: int = 0) -> PagedBatch:
    """The poisoned batch of a named attention shape (``kernels/ops/paged_*.py``): ``seq_len`` (list), ``q_len``
    (1 for decode, else a list), heads, ``head_dim``, ``block_size``, ``dtype``, ``kv_dtype`` and optionally
    ``sliding_window``, ``soft_cap``, ``scale``, ``k_scale``/``v_scale`` (fp8 cache), ``loud_future``,
    ``q_scale``, ``layout``, ``sinks`` (the logit the call's sinks are drawn around, ``draw_sinks``).
    Interpreter-sized shapes use ``make_paged_batch``; GPU-sized ones (tens of GB in float64) the same poison
    built with torch on the device."""
    q_lens = None if shape["q_len"] == 1 else shape["q_len"]
    kv_tokens = sum(shape["seq_len"])
    extra = {k: shape[k] for k in CALL_KEYS + ("loud_future", "loud_logit", "q_scale", "layout")
             if shape.get(k) is not None}
    if shape.get("sinks") is not None:  # the shape's sinks: the logit they are drawn around
        extra["sink_logit"] = shape["sinks"]
    if shape["kv_dtype"] == "float8_e4m3fn":
        extra.update(k_scale=shape.get("k_scale", 1.0), v_scale=shape.get("v_scale", 1.0))
    if device == "cpu" or kv_tokens * shape["num_kv_heads"] * shape["head_dim"] < 2 ** 24:
        return make_paged_batch(shape["seq_len"], q_lens, num_q_heads=shape["num_q_heads"],
                                num_kv_heads=shape["num_kv_heads"], head_dim=shape["head_dim"],
                                block_size=shape["block_size"], dtype=shape["dtype"], kv_dtype=shape["kv_dtype"],
                                seed=seed, device=device, **extra)
    return _device_paged_batch(shape, device, seed)


def _device_paged_batch(shape, device, seed) -> PagedBatch:
    # the meta device has no generator (it stands in for CUDA in the meta-device run; it has no values either)
    g = None if torch.device(device).type == "meta" else torch.Generator(device=device).manual_seed(seed)
    bs, hkv, d, hq = shape["block_size"], shape["num_kv_heads"], shape["head_dim"], shape["num_q_heads"]
    lens = list(shape["seq_len"])
    q_lens = [1] * len(lens) if shape["q_len"] == 1 else list(shape["q_len"])
    need = [-(-n // bs) for n in lens]
    num_blocks = sum(need) + 2
    pool = torch.randperm(num_blocks, generator=g, device=device)
    table = torch.full((len(lens), max(need) + 2), -1, dtype=torch.int32, device=device)
    caches = [torch.randn((num_blocks, bs, hkv, d), generator=g, device=device, dtype=torch.bfloat16)
              for _ in range(2)]
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = pool[start:start + n].to(torch.int32)
        tail = lens[i] % bs
        for c in caches:
            if tail:
                c[pool[start + n - 1:start + n], tail:] = float("nan")  # a tensor index: no host read
        start += n
    for c in caches:
        c[pool[start:]] = float("nan")  # spare blocks
    kv_dtype = torch_dtype(shape["kv_dtype"])
    k_cache, v_cache = (c.to(kv_dtype) for c in caches)
    q = torch.randn((sum(q_lens), hq, d), generator=g, device=device).to(torch_dtype(shape["dtype"]))
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32, device=device)
    kwargs = {k: shape[k] for k in CALL_KEYS if shape.get(k) is not None}
    if shape["kv_dtype"] == "float8_e4m3fn":
        kwargs.update(k_scale=shape.get("k_scale", 1.0), v_scale=shape.get("v_scale", 1.0))
    if shape.get("sinks") is not None:
        kwargs["sinks"] = draw_sinks(hq, shape["sinks"], seed, device)
    return PagedBatch(q, k_cache, v_cache, table, torch.tensor(lens, dtype=torch.int32, device=device), qsl, kwargs)


def attention_call(fn, batch: PagedBatch, decode: bool) -> dict:
    """``{"out", "lse"}`` of any implementation of paged_decode/paged_prefill. An implementation that cannot
    return the LSE raises ``Unsupported("return_lse: ...")``: its ``out`` is still judged, ``lse`` is reported
    as not provided."""
    args = batch.decode_args() if decode else batch.prefill_args()
    try:
        out, lse = fn(*args, return_lse=True, **batch.kwargs)
    except Unsupported as exc:
        if not str(exc).startswith("return_lse"):
            raise
        return {"out": fn(*args, **batch.kwargs), "lse": NotProvided(str(exc))}
    return {"out": out, "lse": lse}


def attention_tolerance(batch: PagedBatch, decode: bool) -> dict:
    """Per element. out: a convex combination of V rows, so each element's budget scales with its own
    ``sum_i p_i |v_i|`` (``attention_scales``; ``attention_out_atol``). lse: bounded by the largest logit error,
    which scales with the query's largest visible |logit| (``lse_atol``)."""
    dtype = str(batch.q.dtype).replace("torch.", "")
    magnitude, logit_max = batch.attention_scales(decode=decode)
    return {"out": attention_out_atol(dtype, magnitude), "lse": lse_atol(dtype, logit_max)}


def attention_features(args, kwargs) -> set:
    """What a provider may decline: ``fp8_kv``, ``soft_cap``, ``sliding_window``, ``sinks``, ``head_dim=<d>``,
    ``dtype=<name>``, ``batch_invariant``, ``split_control`` (num_splits/split_size)."""
    q, k_cache = args[0], args[1]
    feats = {f"head_dim={q.shape[-1]}", f"dtype={str(q.dtype).replace('torch.', '')}"}
    if "float8" in str(k_cache.dtype):
        feats.add("fp8_kv")
    for key in ("soft_cap", "sliding_window", "batch_invariant"):
        if kwargs.get(key):
            feats.add(key)
    if kwargs.get("sinks") is not None:
        feats.add("sinks")
    if kwargs.get("num_splits") is not None or kwargs.get("split_size") is not None:
        feats.add("split_control")
    return feats


def full_attention_inputs(shape: dict, big, decode: bool) -> tuple[tuple, dict]:
    """A paged attention call at a catalogue shape that costs (almost) no memory (``OpSpec.full_inputs``): the
    caches from ``big``, sequential block tables, zero queries. Values are arbitrary: byte counts and grids depend
    on addresses and masks only."""
    bs, lens = shape["block_size"], shape["seq_len"]
    q_lens = [1] * len(lens) if shape["q_len"] == 1 else shape["q_len"]
    need = [-(-n // bs) for n in lens]
    nb = sum(need) + 1
    cache_shape = (nb, bs, shape["num_kv_heads"], shape["head_dim"])
    k_cache, v_cache = big(cache_shape, shape["kv_dtype"]), big(cache_shape, shape["kv_dtype"])
    table = torch.zeros((len(lens), max(need)), dtype=torch.int32)
    start = 0
    for i, n in enumerate(need):
        table[i, :n] = torch.arange(start, start + n, dtype=torch.int32)
        start += n
    q = torch.zeros((sum(q_lens), shape["num_q_heads"], shape["head_dim"]), dtype=torch_dtype(shape["dtype"]))
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    kw = {"k_scale": 1.0, "v_scale": 1.0} if shape["kv_dtype"] == "float8_e4m3fn" else {}
    kw.update({k: shape[k] for k in ("sliding_window", "soft_cap") if shape.get(k) is not None})
    if shape.get("sinks") is not None:
        kw["sinks"] = torch.zeros(shape["num_q_heads"], dtype=torch.float32)
    if decode:
        return (q, k_cache, v_cache, table, seq_lens), kw
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32)
    return (q, k_cache, v_cache, table, seq_lens, qsl), kw


def attention_row_shape(s: dict) -> dict:
    """A report row's attention shape: lists of ragged lengths summarised as their max, sum and count."""
    def summary(v):
        return v if isinstance(v, int) else {"max": max(v), "sum": sum(v), "count": len(v)}

    return dict(num_seqs=s["num_seqs"], q_len=summary(s["q_len"]), seq_len=summary(s["seq_len"]),
                num_q_heads=s["num_q_heads"], num_kv_heads=s["num_kv_heads"], head_dim=s["head_dim"],
                block_size=s["block_size"], kv_dtype=s["kv_dtype"])


# the launch-path tests' attention batch (``launch_case``)
LAUNCH_SEQ_LENS, LAUNCH_Q_LENS = [5, 40, 17], [2, 7, 1]


def launch_case(decode: bool, device, kv_dtype=None, sinks: bool = False) -> tuple[tuple, dict, dict]:
    """A small paged attention call for the launch-path tests (``OpSpec.launch_cases``): ``(args, kwargs, hints)``.
    An fp8 cache's scales are tensors, so the kernel must read them from device memory; so are ``sinks``."""
    b = make_paged_batch(LAUNCH_SEQ_LENS, None if decode else LAUNCH_Q_LENS, num_q_heads=4, num_kv_heads=2,
                         head_dim=32, block_size=16, dtype="float16", kv_dtype=kv_dtype, seed=3, device=device,
                         sink_logit=2.0 if sinks else None)
    kwargs = dict(b.kwargs)
    if kv_dtype:
        kwargs.update(k_scale=torch.tensor([0.5], device=device), v_scale=torch.tensor([2.0], device=device))
    if decode:
        return b.decode_args(), dict(kwargs, num_splits=None), {"max_seq_len": max(LAUNCH_SEQ_LENS)}
    return b.prefill_args(), kwargs, {"max_query_len": max(LAUNCH_Q_LENS), "max_seq_len": max(LAUNCH_SEQ_LENS)}
