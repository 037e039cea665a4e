"""``torch_sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on the paged batch gathered into a dense
padded ``[B, H, L, D]`` layout (paging removed: a lower bound on what attention over these lengths costs), a
baseline a measured report times beside ours.

It applies where SDPA computes the same math without a mask: every sequence the same length, a full prefill
(``q_len == seq_len``) or a decode, no sliding window, no soft-cap, no fp8 cache, no LSE. Anywhere else the
timing setup raises ``ValueError`` naming the argument (the harness reports it instead of a time) and the
functions raise ``Unsupported`` with the same reason (judged by ``check``/pytest, such a case is unsupported).

Timing (``setup``): the gather into the dense layout is setup (untimed), the SDPA call is timed, and
``postprocess`` (untimed) gives the check our ``[num_tokens, H, D]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.impls import Launch, Provider, Unsupported, peer_launch
from kernels.validate import require

# the contract's keywords SDPA computes (the rest must be at their defaults: anything else is another math)
_COMPUTED = ("scale", "sliding_window", "soft_cap", "k_scale", "v_scale")
_IGNORED = ("num_splits", "split_size")  # our split controls: SDPA picks its own
DECLINED = {"sliding_window": "torch_sdpa applies without a sliding window",
            "soft_cap": "torch_sdpa applies without a soft-cap",
            "fp8_kv": "torch_sdpa applies to float16/bfloat16/float32 caches",
            "return_lse": "torch's scaled_dot_product_attention returns no LSE"}


def dense_setup(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, *, scale=None,
                sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, **ignored) -> dict:
    """Gather the paged batch into dense ``[B, H, L, D]`` tensors; refuse what SDPA does not compute."""
    require(sliding_window is None, "sliding_window", DECLINED["sliding_window"])
    require(soft_cap is None, "soft_cap", DECLINED["soft_cap"])
    require(k_cache.dtype != torch.float8_e4m3fn, "k_cache", DECLINED["fp8_kv"])
    lens = seq_lens.cpu()
    require(len(lens) > 0 and bool((lens == lens[0]).all()) and int(lens[0]) > 0, "seq_lens",
            "torch_sdpa applies to batches whose sequences all have the same (non-zero) length")
    num_seqs, length = len(lens), int(lens[0])
    decode = query_start_loc is None
    if not decode:
        q_lens = (query_start_loc[1:] - query_start_loc[:-1]).cpu()
        require(bool((q_lens == length).all()), "query_start_loc",
                "torch_sdpa applies to full prefills (q_len == seq_len for every sequence) or decode")
    bs = k_cache.shape[1]
    nblk = -(-length // bs)
    table = block_table[:, :nblk].long()
    k = k_cache[table].reshape(num_seqs, nblk * bs, *k_cache.shape[2:])[:, :length]
    v = v_cache[table].reshape(num_seqs, nblk * bs, *v_cache.shape[2:])[:, :length]
    q_len = 1 if decode else length
    qd = q.reshape(num_seqs, q_len, *q.shape[1:])
    return {
        "q": qd.transpose(1, 2).contiguous(), "k": k.transpose(1, 2).contiguous(), "v": v.transpose(1, 2).contiguous(),
        "scale": scale, "causal": not decode, "gqa": q.shape[1] != k_cache.shape[2], "shape": tuple(q.shape),
    }


def sdpa_run(state: dict) -> torch.Tensor:
    return F.scaled_dot_product_attention(state["q"], state["k"], state["v"], is_causal=state["causal"],
                                          scale=state["scale"], enable_gqa=state["gqa"])


def to_tokens(out: torch.Tensor) -> torch.Tensor:
    """``[B, H, Lq, D]`` back to our ``[num_tokens, H, D]`` (tokens of a sequence are consecutive)."""
    b, h, lq, d = out.shape
    return out.transpose(1, 2).reshape(b * lq, h, d)


def setup(*args, **kwargs) -> Launch:
    """The timed call of ``paged_decode`` (``q [num_seqs, H, D]``) or ``paged_prefill`` (``query_start_loc``
    given): the gather in setup, SDPA timed, the layout back in ``postprocess``."""
    return peer_launch(sdpa_run, dense_setup(*args, **kwargs), to_tokens)


def _attention(args, kwargs):
    """The contract's call: a keyword this math does not compute, at anything but its default, is declined."""
    if kwargs.pop("return_lse", False):
        raise Unsupported(f"return_lse: {DECLINED['return_lse']}")
    for key in _IGNORED:
        kwargs.pop(key, None)
    other = sorted(k for k, v in kwargs.items() if k not in _COMPUTED and v not in (None, False))
    if other:
        raise Unsupported(f"{', '.join(other)}: torch_sdpa computes plain attention without them")
    try:
        state = dense_setup(*args, **{k: v for k, v in kwargs.items() if k in _COMPUTED})
    except ValueError as exc:
        raise Unsupported(str(exc)) from exc
    return to_tokens(sdpa_run(state)).to(args[0].dtype)


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, **kwargs):
    return _attention((q, k_cache, v_cache, block_table, seq_lens), kwargs)


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, **kwargs):
    return _attention((q, k_cache, v_cache, block_table, seq_lens, query_start_loc), kwargs)


PROVIDER = Provider(
    name="torch_sdpa", description="torch's scaled_dot_product_attention on the batch gathered dense (a baseline)",
    functions={"paged_decode": paged_decode, "paged_prefill": paged_prefill},
    unsupported={op: dict(DECLINED) for op in ("paged_decode", "paged_prefill")},
    timers={"paged_decode": setup, "paged_prefill": setup},
    baseline=True,
    triton=False,
    validates=False,
)
