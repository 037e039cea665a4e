"""Input checks shared by the references and the Triton launchers.

Every check raises ``ValueError`` naming the offending argument, before any kernel launches or any output is
written. Works on numpy arrays and torch tensors alike (only ``.shape``, ``.dtype`` and small integer metadata
are read; metadata is copied to the host once).

``validate=False`` (the launchers' launch path, see the README's contract notes) keeps every check that reads
only shapes, dtypes, devices and strides, and skips those that read device tensor values: then nothing here
copies a device tensor to the host, and the plan's maxima come from the caller's host hints (``max_seq_len``,
``max_query_len``) or, without a hint, from an upper bound computed from shapes alone.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import numpy as np

ATTN_DTYPES = ("float16", "bfloat16", "float32")
FP8_DTYPES = ("float8_e4m3fn",)
MAX_BLOCK_SIZE = 256


def dtype_name(x) -> str:
    """'float16', 'bfloat16', 'float32', 'float8_e4m3fn', 'int32', ... for numpy arrays and torch tensors."""
    return str(x.dtype).replace("torch.", "")


def is_torch(x) -> bool:
    """A torch tensor (subclasses included), told without importing torch."""
    return any(c.__module__.startswith("torch") for c in type(x).__mro__[:-1])


def host_ints(x, name: str) -> np.ndarray:
    """Small integer metadata as a host int64 numpy array (one device->host copy for a GPU tensor)."""
    if is_torch(x):
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
        return x.detach().cpu().numpy().astype(np.int64)
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def require(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


def check_ndim(x, ndim: int, name: str, layout: str) -> None:
    require(hasattr(x, "shape") and len(x.shape) == ndim, name,
            f"expected {ndim}-D {layout}, got shape {tuple(getattr(x, 'shape', ()))}")


def check_same_device(**tensors) -> None:
    """All torch tensors on one device (numpy arrays count as 'cpu')."""
    devices = {n: (str(t.device) if is_torch(t) else "cpu") for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        first = next(iter(devices))
        odd = next(n for n, d in devices.items() if d != devices[first])
        raise ValueError(f"{odd}: on device {devices[odd]}, but {first} is on {devices[first]}")


@dataclass(frozen=True)
class AttnDims:
    num_seqs: int
    num_tokens: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    num_blocks: int
    block_size: int
    max_blocks: int
    seq_lens: np.ndarray | None  # host int64 [num_seqs]; None when not validated (never copied)
    query_start_loc: np.ndarray | None  # host int64 [num_seqs + 1]; None when not validated
    scale: float
    kv_is_fp8: bool
    max_seq_len: int = 0  # the plan's bound on seq_lens: the hint, else the true max (validated) or a shape bound
    max_query_len: int = 0  # the plan's bound on the query lengths, likewise

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def q_lens(self) -> np.ndarray:
        return np.diff(self.query_start_loc)


def check_split_control(num_splits, split_size) -> None:
    """paged_decode's partition keywords as the contract states them: at most one of the two, each None or an
    int >= 1 (a kernel may add its own limits)."""
    require(num_splits is None or split_size is None, "num_splits",
            "give at most one of num_splits and split_size")
    for name, val in (("num_splits", num_splits), ("split_size", split_size)):
        if val is not None:
            require(isinstance(val, (int, np.integer)) and not isinstance(val, bool) and val >= 1, name,
                    f"must be None or an int >= 1, got {val!r}")


def check_merge_states(outs, lses, dtypes=ATTN_DTYPES) -> None:
    """merge_states' ``outs [S, T, H, D]`` and ``lses [S, T, H]``: shapes, S >= 1, dtypes (``dtypes``: the
    contract's, plus float64 for the reference), one device."""
    check_ndim(outs, 4, "outs", "[S, num_tokens, num_heads, head_dim]")
    check_ndim(lses, 3, "lses", "[S, num_tokens, num_heads]")
    require(tuple(lses.shape) == tuple(outs.shape[:3]), "lses",
            f"shape {tuple(lses.shape)} must be outs.shape[:3] = {tuple(outs.shape[:3])}")
    require(outs.shape[0] >= 1, "outs", "needs at least one partial (S >= 1)")
    require(dtype_name(outs) in dtypes, "outs", f"dtype must be one of {dtypes}, got {dtype_name(outs)}")
    require(dtype_name(lses) in dtypes, "lses", f"dtype must be one of {dtypes}, got {dtype_name(lses)}")
    check_same_device(outs=outs, lses=lses)


def check_hint(value, name: str) -> int | None:
    """A host hint (``max_seq_len``, ``max_query_len``): None or a Python int >= 0."""
    if value is None:
        return None
    require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0, name,
            f"must be None or an int >= 0, got {value!r}")
    return int(value)


def check_attention(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, *, scale=None,
                    sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, validate=True,
                    max_seq_len=None, max_query_len=None, sinks=None) -> AttnDims:
    """Validate a paged attention call. ``query_start_loc=None`` means decode (one query per sequence).

    ``validate=False``: shapes, dtypes, devices, strides and host scalars only (no device value is read);
    without hints the plan bounds are ``max_blocks * block_size`` (seq_len) and ``num_tokens`` (query length).
    """
    decode = query_start_loc is None
    check_ndim(q, 3, "q", "[num_seqs, num_q_heads, head_dim]" if decode else "[num_tokens, num_q_heads, head_dim]")
    check_ndim(k_cache, 4, "k_cache", "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(v_cache, 4, "v_cache", "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(block_table, 2, "block_table", "[num_seqs, max_blocks]")
    check_ndim(seq_lens, 1, "seq_lens", "[num_seqs]")
    require(tuple(v_cache.shape) == tuple(k_cache.shape), "v_cache",
            f"shape {tuple(v_cache.shape)} differs from k_cache {tuple(k_cache.shape)}")
    num_tokens, hq, d = (int(s) for s in q.shape)
    num_blocks, block_size, hkv, dk = (int(s) for s in k_cache.shape)
    require(dk == d, "k_cache", f"head_dim {dk} differs from q's head_dim {d}")
    require(d % 8 == 0 and 32 <= d <= 256, "q", f"head_dim must be a multiple of 8 in 32..256, got {d}")
    require(1 <= block_size <= MAX_BLOCK_SIZE, "k_cache", f"block_size must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
    require(hkv >= 1 and hq % hkv == 0, "q",
            f"num_q_heads {hq} is not a multiple of the cache's num_kv_heads {hkv}")
    # dtypes
    qd, kd, vd = dtype_name(q), dtype_name(k_cache), dtype_name(v_cache)
    if is_torch(q) or is_torch(k_cache):
        require(qd in ATTN_DTYPES, "q", f"dtype must be one of {ATTN_DTYPES}, got {qd}")
        require(kd == vd, "v_cache", f"dtype {vd} differs from k_cache dtype {kd}")
        require(kd == qd or kd in FP8_DTYPES, "k_cache",
                f"dtype {kd} must equal q's dtype {qd} or be float8_e4m3fn")
    kv_is_fp8 = kd in FP8_DTYPES
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens,
                      query_start_loc=query_start_loc, sinks=sinks)
    check_sinks(sinks, hq)
    if is_torch(k_cache):
        require(k_cache.stride(-1) == 1, "k_cache", "last dimension (head_dim) must be contiguous")
        require(v_cache.stride(-1) == 1, "v_cache", "last dimension (head_dim) must be contiguous")
    num_seqs, max_blocks = (int(s) for s in block_table.shape)
    require(int(seq_lens.shape[0]) == num_seqs, "seq_lens",
            f"has {int(seq_lens.shape[0])} entries, block_table has {num_seqs} rows")
    for nm, t in (("block_table", block_table), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        if t is not None and is_torch(t):
            require(not (t.is_floating_point() or t.is_complex()), nm, f"must be an integer tensor, got {t.dtype}")
    if decode:
        require(num_tokens == num_seqs, "q", f"decode takes one query per sequence: {num_tokens} != num_seqs {num_seqs}")
    else:
        check_ndim(query_start_loc, 1, "query_start_loc", "[num_seqs + 1]")
        require(int(query_start_loc.shape[0]) == num_seqs + 1, "query_start_loc",
                f"needs num_seqs + 1 = {num_seqs + 1} entries, got {int(query_start_loc.shape[0])}")
    hint_seq = check_hint(max_seq_len, "max_seq_len")
    hint_q = check_hint(max_query_len, "max_query_len")
    scale = _check_attention_scalars(d, scale, sliding_window, soft_cap, k_scale, v_scale, kv_is_fp8, kd, validate)
    if not validate:
        bound_seq = max_blocks * block_size if hint_seq is None else hint_seq
        bound_q = (1 if decode else num_tokens) if hint_q is None else hint_q
        return AttnDims(num_seqs, num_tokens, hq, hkv, d, num_blocks, block_size, max_blocks, None, None,
                        scale, kv_is_fp8, bound_seq, bound_q)
    sl, qsl = _check_attention_metadata(block_table, seq_lens, query_start_loc, num_tokens, num_blocks, block_size)
    true_seq, true_q = int(sl.max(initial=0)), int(np.diff(qsl).max(initial=0))
    require(hint_seq is None or hint_seq >= true_seq, "max_seq_len",
            f"hint {hint_seq} is below the batch's longest sequence ({true_seq} tokens)")
    require(hint_q is None or hint_q >= true_q, "max_query_len",
            f"hint {hint_q} is below the batch's longest query chunk ({true_q} tokens)")
    return AttnDims(num_seqs, num_tokens, hq, hkv, d, num_blocks, block_size, max_blocks, sl, qsl,
                    scale, kv_is_fp8, true_seq if hint_seq is None else hint_seq,
                    true_q if hint_q is None else hint_q)


def check_sinks(sinks, num_q_heads: int) -> None:
    """Attention sinks: None, or float32 ``[num_q_heads]`` (one logit per query head). Their values are not read
    (a NaN sink is allowed: it poisons its head), so ``validate=False`` checks the same."""
    if sinks is None:
        return
    check_ndim(sinks, 1, "sinks", "[num_q_heads]")
    require(int(sinks.shape[0]) == num_q_heads, "sinks", f"has {int(sinks.shape[0])} entries, q has {num_q_heads} heads")
    require(dtype_name(sinks) == "float32", "sinks", f"dtype must be float32, got {dtype_name(sinks)}")


def _check_attention_metadata(block_table, seq_lens, query_start_loc, num_tokens: int, num_blocks: int,
                              block_size: int):
    """The value checks of the metadata (one host copy of each tensor): ``(seq_lens, query_start_loc)`` int64."""
    bt = host_ints(block_table, "block_table")
    sl = host_ints(seq_lens, "seq_lens")
    num_seqs, max_blocks = bt.shape
    require(bool((sl >= 0).all()), "seq_lens", "must be >= 0")
    if query_start_loc is None:
        qsl = np.arange(num_seqs + 1, dtype=np.int64)
    else:
        qsl = host_ints(query_start_loc, "query_start_loc")
        require(qsl[0] == 0, "query_start_loc", f"must start at 0, got {qsl[0]}")
        require(bool((np.diff(qsl) >= 0).all()), "query_start_loc", "must be non-decreasing")
        require(qsl[-1] == num_tokens, "query_start_loc", f"must end at num_tokens = {num_tokens}, got {qsl[-1]}")
        q_lens = np.diff(qsl)
        bad = np.nonzero(q_lens > sl)[0]
        require(bad.size == 0, "query_start_loc",
                f"q_len > seq_len for sequence {bad[0] if bad.size else -1}" +
                (f" ({q_lens[bad[0]]} > {sl[bad[0]]})" if bad.size else ""))
    need = -(-sl // block_size)
    short = np.nonzero(need > max_blocks)[0]
    require(short.size == 0, "block_table",
            f"too short: sequence {short[0] if short.size else -1} needs {need[short[0]] if short.size else 0} blocks, "
            f"table has {max_blocks}")
    used = np.arange(max_blocks)[None, :] < need[:, None]
    ids = bt[used]
    if ids.size:
        require(bool((ids >= 0).all() and (ids < num_blocks).all()), "block_table",
                f"block ids in use must be in [0, {num_blocks}), got range [{ids.min()}, {ids.max()}]")
    return sl, qsl


def _check_attention_scalars(head_dim: int, scale, sliding_window, soft_cap, k_scale, v_scale, kv_is_fp8: bool,
                             cache_dtype: str, validate: bool):
    """The softmax scale (default ``head_dim ** -0.5``) after checking the host scalars and the k/v scales."""
    if scale is None:
        scale = head_dim ** -0.5
    require(math.isfinite(float(scale)), "scale", f"must be finite, got {scale}")
    if sliding_window is not None:
        require(int(sliding_window) == sliding_window and sliding_window >= 1, "sliding_window",
                f"must be None or an int >= 1, got {sliding_window}")
    if soft_cap is not None:
        require(math.isfinite(float(soft_cap)) and soft_cap > 0, "soft_cap", f"must be None or > 0, got {soft_cap}")
    check_cache_scales(k_scale, v_scale, kv_is_fp8, cache_dtype, validate)
    return float(scale)


def check_cache_scales(k_scale, v_scale, kv_is_fp8: bool, cache_dtype: str, validate: bool = True) -> None:
    """Finite positive scales, and 1.0 unless the cache is float8 (a scale on any other cache is refused, not
    applied by one implementation and ignored by another). A tensor scale's value is read only when
    ``validate`` (else its size only)."""
    for nm, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not validate and hasattr(s, "numel"):
            require(s.numel() == 1, nm, f"must hold one element, got {s.numel()}")
            continue
        sv = scalar(s, nm)
        require(math.isfinite(sv) and sv > 0, nm, f"must be a finite positive number, got {sv}")
        require(kv_is_fp8 or sv == 1.0, nm, f"applies only to a float8_e4m3fn cache; got {sv} with a {cache_dtype} cache")


def scalar(s, name: str) -> float:
    """A float from a Python number or a 1-element array/tensor."""
    if hasattr(s, "numel"):
        require(s.numel() == 1, name, f"must hold one element, got {s.numel()}")
        return float(s.reshape(-1)[0].item())
    arr = np.asarray(s, dtype=np.float64)
    require(arr.size == 1, name, f"must hold one element, got {arr.size}")
    return float(arr.reshape(-1)[0])


def check_kv_write(key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale, validate=True) -> None:
    """Shared by the reference and the kernel: shapes, dtypes, devices and (``validate`` only) slot range."""
    check_ndim(key, 3, "key", "[num_tokens, num_kv_heads, head_dim]")
    check_ndim(value, 3, "value", "[num_tokens, num_kv_heads, head_dim]")
    check_ndim(k_cache, 4, "k_cache", "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(v_cache, 4, "v_cache", "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(slot_mapping, 1, "slot_mapping", "[num_tokens]")
    require(tuple(value.shape) == tuple(key.shape), "value", f"shape {tuple(value.shape)} differs from key {tuple(key.shape)}")
    require(tuple(v_cache.shape) == tuple(k_cache.shape), "v_cache",
            f"shape {tuple(v_cache.shape)} differs from k_cache {tuple(k_cache.shape)}")
    require(tuple(key.shape[1:]) == tuple(k_cache.shape[2:]), "key",
            f"[num_kv_heads, head_dim] {tuple(key.shape[1:])} differs from the cache's {tuple(k_cache.shape[2:])}")
    require(slot_mapping.shape[0] == key.shape[0], "slot_mapping",
            f"has {slot_mapping.shape[0]} entries for {key.shape[0]} tokens")
    require(dtype_name(v_cache) == dtype_name(k_cache), "v_cache",
            f"dtype {dtype_name(v_cache)} differs from k_cache dtype {dtype_name(k_cache)}")
    if is_torch(key) or is_torch(k_cache):
        kd, cd = dtype_name(key), dtype_name(k_cache)
        require(kd in ATTN_DTYPES, "key", f"dtype must be one of {ATTN_DTYPES}, got {kd}")
        require(dtype_name(value) == kd, "value", f"dtype {dtype_name(value)} differs from key dtype {kd}")
        require(cd == kd or cd in FP8_DTYPES, "k_cache", f"dtype {cd} must equal key's dtype {kd} or be float8_e4m3fn")
    check_same_device(key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if is_torch(slot_mapping):
        require(not (slot_mapping.is_floating_point() or slot_mapping.is_complex()), "slot_mapping",
                f"must be an integer tensor, got {slot_mapping.dtype}")
    check_cache_scales(k_scale, v_scale, dtype_name(k_cache) in FP8_DTYPES, dtype_name(k_cache), validate)
    if not validate:
        return
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    slots = host_ints(slot_mapping, "slot_mapping")
    bad = slots >= num_slots
    require(not bad.any(), "slot_mapping", f"slot {slots[bad][0] if bad.any() else 0} is past the cache's {num_slots} slots")


def numpy_argument(args: dict) -> str | None:
    """The name of the first numpy array among ``args`` (a name -> value mapping; the tensor fields of an
    ``Int4Weight`` / ``Fp8Weight`` are looked into, named ``weight.scales`` etc.), or None. Reads nothing."""
    for name, value in args.items():
        if isinstance(value, np.ndarray):
            return name
        fields = getattr(value, "__dataclass_fields__", None)
        if fields:
            inner = numpy_argument({f"{name}.{f}": getattr(value, f) for f in fields})
            if inner:
                return inner
    return None


def torch_arguments(fn):
    """Decorator for a Triton op's launcher: a numpy array passed for any argument is a ValueError naming it,
    raised before anything else runs (so before any launch, and with ``validate=False`` too: only Python
    types are looked at, no tensor value is read)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:
            return fn(*args, **kwargs)  # a wrong call raises its own TypeError
        name = numpy_argument(bound.arguments)
        if name is not None:
            raise ValueError(f"{name}: is a numpy array; Triton kernels take torch tensors "
                             "(torch.from_numpy(...), on the GPU or on the CPU with TRITON_INTERPRET=1)")
        return fn(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------------------ MLA decode

MLA_MAX_Q_LEN = 8  # queries per sequence with ``query_start_loc`` (multi-token prediction verifies up to 8)


@dataclass(frozen=True)
class MlaDims:
    """A validated ``mla_decode`` call: ``num_heads`` query heads over one latent head of ``rank`` (R) + ``rope``
    (P) dimensions. ``seq_lens``/``query_start_loc`` are host copies, None when not validated."""

    num_seqs: int
    num_tokens: int
    num_heads: int
    rank: int
    rope: int
    num_blocks: int
    block_size: int
    max_blocks: int
    seq_lens: np.ndarray | None
    query_start_loc: np.ndarray | None
    scale: float
    kv_is_fp8: bool
    multi_token: bool
    max_seq_len: int = 0  # the plan's bound: the hint, else the true max (validated) or max_blocks * block_size
    max_query_len: int = 1  # likewise for the queries per sequence (1 without query_start_loc)


def check_mla(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, query_start_loc=None, *, scale,
              kv_scale=1.0, validate=True, max_seq_len=None, max_query_len=None) -> MlaDims:
    """Validate an ``mla_decode`` call (see the contract). ``query_start_loc=None``: one query per sequence;
    else 0 to ``MLA_MAX_Q_LEN`` per sequence (none past its ``seq_len``). ``validate=False``: shapes, dtypes,
    devices, strides and host scalars only."""
    multi = query_start_loc is not None
    check_ndim(q_nope, 3, "q_nope", "[num_tokens, num_heads, kv_lora_rank]")
    check_ndim(q_pe, 3, "q_pe", "[num_tokens, num_heads, rope_dim]")
    check_ndim(kv_c_cache, 3, "kv_c_cache", "[num_blocks, block_size, kv_lora_rank]")
    check_ndim(k_pe_cache, 3, "k_pe_cache", "[num_blocks, block_size, rope_dim]")
    check_ndim(block_table, 2, "block_table", "[num_seqs, max_blocks]")
    check_ndim(seq_lens, 1, "seq_lens", "[num_seqs]")
    num_tokens, h, r = (int(s) for s in q_nope.shape)
    require(tuple(q_pe.shape[:2]) == (num_tokens, h), "q_pe",
            f"[num_tokens, num_heads] {tuple(q_pe.shape[:2])} differs from q_nope's {(num_tokens, h)}")
    p = int(q_pe.shape[2])
    num_blocks, block_size, rc = (int(s) for s in kv_c_cache.shape)
    require(tuple(k_pe_cache.shape[:2]) == (num_blocks, block_size), "k_pe_cache",
            f"[num_blocks, block_size] {tuple(k_pe_cache.shape[:2])} differs from kv_c_cache's "
            f"{(num_blocks, block_size)}")
    require(rc == r, "kv_c_cache", f"kv_lora_rank {rc} differs from q_nope's {r}")
    require(int(k_pe_cache.shape[2]) == p, "k_pe_cache", f"rope dim {int(k_pe_cache.shape[2])} differs from q_pe's {p}")
    require(r % 16 == 0 and 16 <= r <= 1024, "q_nope", f"kv_lora_rank must be a multiple of 16 in 16..1024, got {r}")
    require(p % 8 == 0 and 8 <= p <= 256, "q_pe", f"rope dim must be a multiple of 8 in 8..256, got {p}")
    require(h >= 1, "q_nope", "needs at least one head")
    require(1 <= block_size <= MAX_BLOCK_SIZE, "kv_c_cache",
            f"block_size must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
    qd, pd, cd, kd = dtype_name(q_nope), dtype_name(q_pe), dtype_name(kv_c_cache), dtype_name(k_pe_cache)
    if any(is_torch(t) for t in (q_nope, q_pe, kv_c_cache, k_pe_cache)):
        require(qd in ATTN_DTYPES, "q_nope", f"dtype must be one of {ATTN_DTYPES}, got {qd}")
        require(pd == qd, "q_pe", f"dtype {pd} differs from q_nope's {qd}")
        require(cd == qd or cd in FP8_DTYPES, "kv_c_cache", f"dtype {cd} must equal q's dtype {qd} or be float8_e4m3fn")
        require(kd == cd, "k_pe_cache", f"dtype {kd} differs from kv_c_cache's {cd}")
    kv_is_fp8 = cd in FP8_DTYPES
    check_same_device(q_nope=q_nope, q_pe=q_pe, kv_c_cache=kv_c_cache, k_pe_cache=k_pe_cache,
                      block_table=block_table, seq_lens=seq_lens, query_start_loc=query_start_loc)
    for nm, t in (("kv_c_cache", kv_c_cache), ("k_pe_cache", k_pe_cache)):
        if is_torch(t):
            require(t.stride(-1) == 1, nm, "last dimension must be contiguous")
    num_seqs = int(block_table.shape[0])
    max_blocks = int(block_table.shape[1])
    require(int(seq_lens.shape[0]) == num_seqs, "seq_lens",
            f"has {int(seq_lens.shape[0])} entries, block_table has {num_seqs} rows")
    for nm, t in (("block_table", block_table), ("seq_lens", seq_lens), ("query_start_loc", query_start_loc)):
        if t is not None and is_torch(t):
            require(not (t.is_floating_point() or t.is_complex()), nm, f"must be an integer tensor, got {t.dtype}")
    if multi:
        check_ndim(query_start_loc, 1, "query_start_loc", "[num_seqs + 1]")
        require(int(query_start_loc.shape[0]) == num_seqs + 1, "query_start_loc",
                f"needs num_seqs + 1 = {num_seqs + 1} entries, got {int(query_start_loc.shape[0])}")
    else:
        require(num_tokens == num_seqs, "q_nope",
                f"one query per sequence without query_start_loc: {num_tokens} != num_seqs {num_seqs}")
    require(scale is not None, "scale", "is required (it comes from the un-absorbed head size)")
    require(isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(scale, bool)
            and math.isfinite(float(scale)) and scale > 0, "scale", f"must be a finite number > 0, got {scale!r}")
    if not validate and hasattr(kv_scale, "numel"):
        require(kv_scale.numel() == 1, "kv_scale", f"must hold one element, got {kv_scale.numel()}")
    else:
        sv = scalar(kv_scale, "kv_scale")
        require(math.isfinite(sv) and sv > 0, "kv_scale", f"must be a finite positive number, got {sv}")
        require(kv_is_fp8 or sv == 1.0, "kv_scale",
                f"applies only to a float8_e4m3fn cache; got {sv} with a {cd} cache")
    hint_seq = check_hint(max_seq_len, "max_seq_len")
    hint_q = check_hint(max_query_len, "max_query_len")
    require(hint_q is None or hint_q <= MLA_MAX_Q_LEN, "max_query_len", f"at most {MLA_MAX_Q_LEN}, got {hint_q}")
    if not validate:
        seq_bound = hint_seq if hint_seq is not None else max_blocks * block_size
        q_bound = (min(num_tokens, MLA_MAX_Q_LEN) if multi else 1) if hint_q is None else hint_q
        return MlaDims(num_seqs, num_tokens, h, r, p, num_blocks, block_size, max_blocks, None, None, float(scale),
                       kv_is_fp8, multi, seq_bound, max(q_bound, 1))
    sl, qsl = _check_attention_metadata(block_table, seq_lens, query_start_loc, num_tokens, num_blocks, block_size)
    q_lens = np.diff(qsl)
    too_many = np.nonzero(q_lens > MLA_MAX_Q_LEN)[0]
    require(too_many.size == 0, "query_start_loc",
            f"at most {MLA_MAX_Q_LEN} queries per sequence; sequence {too_many[0] if too_many.size else -1} has "
            f"{q_lens[too_many[0]] if too_many.size else 0}")
    true_seq, true_q = int(sl.max(initial=0)), int(q_lens.max(initial=0))
    require(hint_seq is None or hint_seq >= true_seq, "max_seq_len",
            f"hint {hint_seq} is below the batch's longest sequence ({true_seq} tokens)")
    require(hint_q is None or hint_q >= true_q, "max_query_len",
            f"hint {hint_q} is below the batch's most queries per sequence ({true_q})")
    return MlaDims(num_seqs, num_tokens, h, r, p, num_blocks, block_size, max_blocks, sl, qsl, float(scale),
                   kv_is_fp8, multi, true_seq if hint_seq is None else hint_seq,
                   max(true_q if hint_q is None else hint_q, 1))
