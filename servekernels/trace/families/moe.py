"""FlashInfer's fp8 block-scale MoE (``trtllm_fp8_block_scale_moe``) <-> ``fused_moe``, its routing by ``route``.

flashinfer-bench's ``moe_fp8_block_scale_ds_routing_topk{K}_ng{G}_kg{KG}_e{E_local}_h{H}_i{I}`` (DeepSeek-V3/R1,
Kimi K2 at ng1_kg1) and ``moe_fp8_block_scale_renorm_topk{K}_e{E}_h{H}_i{I}`` (Qwen3-MoE), and FlashInfer's
templates ``moe_fp8_block_scale_{ds,default,renormalize,renormalize_naive,topk,llama4}_routing``: one fused call
routes ``routing_logits`` (+ ``routing_bias``) inside, then runs the local experts on fp8 activations.
``trtllm_fp8_block_scale_routed_moe`` (kind ``routed``) takes precomputed global ``topk_ids`` instead, its
reference weighting every chosen expert ``routed_scaling_factor / top_k``. ``Bf16Moe``: ``trtllm_bf16_moe`` and
``trtllm_bf16_routed_moe``, the same with bf16 activations and weights (dense ``fused_moe``, exact).

Their layout and how it becomes the contract's (each step exact unless it says otherwise):

- ``hidden_states`` float8_e4m3fn ``[T, H]`` with ``hidden_states_scale`` float32 stored TRANSPOSED,
  ``[H/128, T]``. The contract's fp8 ``fused_moe`` takes unquantized ``x`` and quantizes it itself per
  token-group of 128 (``quantize_fp8_act``: amax / 448). ``x`` is the float64 product ``q * s`` rounded once to
  float32 (relative 2**-24), and ``inputs_from`` checks that quantizing it gives back the workload's fp8 bytes
  exactly (true for amax / 448 scales, FlashInfer's and flashinfer-bench's producers; the scale comes back within
  2**-23 relative); a workload whose scales are not of that kind is a ``ValueError`` naming
  ``hidden_states_scale`` (our op cannot take its bytes as they are). The output is then float32 (x's dtype):
  the Solution's bfloat16 output is widened, exactly; the fp8 bound's one e4m3 step on h dwarfs its rounding.
- ``gemm1_weights`` ``[E_local, 2I, H]`` fp8 + ``[E_local, 2I/128, H/128]`` scales: rows ``[up; gate]`` (their
  SwiGLU is ``silu(G[:, I:]) * G[:, :I]``), the contract's ``[gate; up]``: the halves swap, data and scale rows
  (I a multiple of 128, so a half is whole scale blocks), as an ``Fp8Weight`` "block" (128, 128), as are
  ``gemm2_weights``.
- routing: ``route``'s float64 reference on their logits (keyword per kind below) gives global ids and float32
  weights; ``local_expert_offset`` keeps experts ``[offset, offset + E_local)``: a slot routed elsewhere becomes
  local expert 0 with weight 0 (it adds nothing, as in their reference).
  ``ds``: sigmoid, ``routing_bias`` selecting only, ``n_group``/``topk_group`` (groups scored by their two best),
  renormalized, ``routed_scaling_factor``; ``renorm``/``renormalize``/``renormalize_naive``: softmax over the
  chosen (bias added to the logits), which is the renormalized softmax top-k; ``default``: softmax top-k, not
  renormalized; ``llama4``: top-1, sigmoid weight; ``topk``: top-k, every weight ``routed_scaling_factor / k``.
- the intermediate: their reference keeps ``h`` in float32; the contract's fp8 path quantizes it per 128-group
  before the second GEMM (as TensorRT-LLM's kernel does): a right Solution of either kind is inside the fp8 bound.

Back (``implementation``): the contract's call is turned into their inputs: ``x`` quantized by
``quantize_fp8_act`` (so a fresh-values refill of ``x`` reaches the Solution), its scales transposed, the weight
halves swapped back, and the routing inputs of the workload these ids and weights were computed from (kept with
the ids tensor by ``inputs_from``): routing happens inside their call, and ids and weights alone name no logits.
So our check cases are not judged through these families (their routing is ids and weights, and none has I a
multiple of 128): ``definition_for`` gives None.
"""
from __future__ import annotations

import re
import weakref

from kernels.ops import Inputs
from servekernels.trace.families._base import Family, Template
from servekernels.trace.schema import Axis, Definition, TensorSpec

BLOCK = 128
KINDS = ("ds", "renorm", "default", "renormalize", "renormalize_naive", "topk", "llama4", "routed")
_NAME = re.compile(r"^moe_fp8_block_scale_(ds_routing|renorm|default_routing|renormalize_routing|"
                   r"renormalize_naive_routing|topk_routing|llama4_routing)_")
_ROUTED_NAME = re.compile(r"^trtllm_fp8_block_scale_routed_moe(_[a-z0-9_]+)?$")
_NEED = ("routing_logits", "hidden_states", "hidden_states_scale", "gemm1_weights", "gemm1_weights_scale",
         "gemm2_weights", "gemm2_weights_scale")
_ROUTING_IN = ("routing_bias", "local_expert_offset", "routed_scaling_factor", "top_k", "n_group", "topk_group",
               "num_experts")
_UNSUPPORTED_IN = ("gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit")  # optional SwiGLU-OA knobs: not the contract's

# the routing ids and weights ``inputs_from`` computed, by id(topk_ids): the workload's routing inputs
_ROUTED: dict[int, tuple] = {}


def _kind_of(name: str) -> str | None:
    if _ROUTED_NAME.match(name):
        return "routed"
    m = _NAME.match(name)
    return None if m is None else m.group(1).replace("_routing", "")


def _const(definition, named: dict, key: str, pattern: str | None = None):
    """A routing constant: the workload's scalar input, else the Definition's const axis, else the name's token."""
    if named.get(key) is not None:
        v = named[key]
        return int(v.item() if hasattr(v, "item") else v)
    axes = getattr(definition, "axes", None) or {}
    if key in axes and getattr(axes[key], "value", None) is not None:
        return int(axes[key].value)
    m = re.search(pattern, definition.name) if pattern else None
    return int(m.group(1)) if m else None


def _scalar(v, default):
    if v is None:
        return default
    return v.item() if hasattr(v, "item") else v


def route_named(kind: str, named: dict, top_k: int, n_group=None, topk_group=None):
    """``(ids int64 [T, k] global, weights float64 [T, k])`` of their routing, by ``route``'s float64 reference;
    ``routed``: the given ``topk_ids`` at the uniform weight ``routed_scaling_factor / top_k`` (what the routed
    templates' references use: the ids carry no weights)."""
    import numpy as np

    from kernels.reference._arrays import f64
    from kernels.reference.routing import route

    if kind == "routed":
        ids = np.asarray(named["topk_ids"].cpu(), dtype=np.int64)
        return ids, np.full(ids.shape, float(_scalar(named.get("routed_scaling_factor"), 1.0) or 1.0) / top_k)
    logits = f64(named["routing_logits"].float())
    bias = named.get("routing_bias")
    bias = None if bias is None else f64(bias.float()).reshape(-1)
    rsf = float(_scalar(named.get("routed_scaling_factor"), 1.0))
    if kind == "ds":
        ids, w = route(logits, top_k, scoring="sigmoid", correction_bias=bias if bias is not None else None,
                       num_groups=n_group, topk_groups=topk_group, renormalize=True, routed_scaling_factor=rsf)
        return np.asarray(ids, dtype=np.int64), np.asarray(w)
    if bias is not None:
        logits = logits + bias[None, :]  # every other kind adds the bias to the logits
    if kind == "llama4":
        ids, w = route(logits, 1, scoring="sigmoid", renormalize=False, routed_scaling_factor=rsf)
    elif kind == "default":
        ids, w = route(logits, top_k, renormalize=False, routed_scaling_factor=rsf)
    else:
        ids, w = route(logits, top_k, renormalize=True, routed_scaling_factor=rsf)
        if kind == "topk":
            w = np.full(w.shape, rsf / top_k)
    return np.asarray(ids, dtype=np.int64), np.asarray(w)


def _local_routing(kind: str, named: dict, e_local: int, top_k: int, ng=None, kg=None):
    """``(ids int32 [T, k] local, weights float32, offset)``: their routing by ``route_named``; a slot routed off
    this rank's ``[offset, offset + e_local)`` is local expert 0 at weight 0. The workload's routing inputs are kept
    with the ids tensor (``_kept_routing``)."""
    import numpy as np
    import torch

    ids, wts = route_named(kind, named, top_k, ng, kg)
    off = int(_scalar(named.get("local_expert_offset"), 0))
    local = (ids >= off) & (ids < off + e_local)
    ids_t = torch.from_numpy(np.where(local, ids - off, 0).astype(np.int32))
    wts_t = torch.from_numpy(np.where(local, wts, 0.0).astype(np.float32))
    for key in [k for k, (ref, _) in _ROUTED.items() if ref() is None]:  # ids tensors gone: their routing too
        del _ROUTED[key]
    _ROUTED[id(ids_t)] = (weakref.ref(ids_t), {k: named[k] for k in ("routing_logits", "topk_ids", *_ROUTING_IN)
                                                if named.get(k) is not None})
    return ids_t, wts_t, off


def _kept_routing(definition, topk_ids) -> dict:
    """The routing inputs of the workload ``topk_ids`` was computed from (a copy), or ``Unsupported``."""
    from kernels.ops import Unsupported

    kept = _ROUTED.get(id(topk_ids))
    if kept is None or kept[0]() is not topk_ids:
        raise Unsupported(f"routing: {definition.name} routes its logits inside the call; these ids and weights "
                          "come from no workload of this adapter")
    return dict(kept[1])


def _need(kind: str, need: tuple) -> tuple:
    """The inputs a layout needs: a routed one takes ``topk_ids`` in place of ``routing_logits``."""
    return tuple("topk_ids" if n == "routing_logits" and kind == "routed" else n for n in need)


def _swap_halves(t, rows: int):
    """``[E, 2R, ...]`` with its two row halves exchanged (their ``[up; gate]`` <-> the contract's ``[gate; up]``)."""
    import torch

    return torch.cat([t[:, rows:], t[:, :rows]], dim=1).contiguous()


class Fp8BlockMoe(Family):
    """FlashInfer's fp8 block-scale MoE with one routing kind (``KINDS``) <-> ``fused_moe`` (module docstring)."""

    op = "fused_moe"

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"kind: one of {KINDS}, got {kind!r}")
        self.kind = kind
        prefix = {"renorm": "moe_fp8_block_scale_renorm", "routed": "trtllm_fp8_block_scale_routed_moe"}.get(
            kind, f"moe_fp8_block_scale_{kind}_routing")
        self.name = prefix
        self.published = (prefix,)
        if kind == "ds":
            sizes = dict(seq_len=5, num_experts=16, top_k=4, n_group=4, topk_group=2, num_local_experts=8,
                         hidden_size=256, intermediate_size=128)
            self.templates = (Template("moe", "trtllm_fp8_block_scale_moe_ds_routing_trace", sizes, (), "contract"),)
        elif kind not in ("renorm", "routed"):  # routed: a template without init (its check builds inputs)
            sizes = dict(seq_len=5, num_experts=8, top_k=1 if kind == "llama4" else 3, num_local_experts=8,
                         hidden_size=256, intermediate_size=128)
            self.templates = (Template("moe", f"trtllm_fp8_block_scale_moe_{kind}_routing_trace", sizes, (),
                                       "contract"),)

    # ------------------------------------------------------------------ which Definitions

    def covers(self, definition):
        return _kind_of(definition.name) == self.kind

    def why_not(self, definition):
        need = _need(self.kind, _NEED)
        missing = [n for n in need if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the fp8 block-scale layout this adapter maps)"
        if set(definition.outputs) != {"output"}:
            return f"outputs {sorted(definition.outputs)}: this adapter maps one output named 'output'"
        unknown = [n for n, s in definition.inputs.items()
                   if n not in set(need) | set(_ROUTING_IN) and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the fused_moe contract"
        inter = definition.const_axes().get("intermediate_size")
        if inter is not None and inter % BLOCK:
            return f"intermediate_size {inter}: not a multiple of {BLOCK} (gate and up share a scale block)"
        if self.kind == "ds" and None in self._ds_groups(definition, {}):
            return "n_group / topk_group: neither inputs nor const axes nor ng<G>_kg<K> in the name"
        if _const(definition, {}, "top_k", r"_topk(\d+)_") is None and "top_k" not in definition.inputs:
            return "top_k: neither an input nor a const axis nor topk<K> in the name"
        return ""

    def _ds_groups(self, definition, named):
        return (_const(definition, named, "n_group", r"_ng(\d+)_"),
                _const(definition, named, "topk_group", r"_kg(\d+)_"))

    def _plain(self, inputs):
        return False  # our cases route by ids and weights (module docstring)

    def definition_for(self, spec, case, inputs, expected):
        return None

    # ------------------------------------------------------------------ their inputs -> the contract's

    def template_named(self, template, init):
        return {k: v for k, v in init.items() if v is not None}

    def inputs_from(self, definition, named):
        import numpy as np
        import torch

        from kernels.reference.quant import Fp8Weight, quantize_fp8_act

        for n in _UNSUPPORTED_IN:
            if named.get(n) is not None:
                raise ValueError(f"{n}: {definition.name}'s workload sets it; fused_moe's SwiGLU has no such knob")
        q, s_t = named["hidden_states"], named["hidden_states_scale"]
        t, h = (int(d) for d in q.shape)
        if q.dtype != torch.float8_e4m3fn:
            raise ValueError(f"hidden_states: float8_e4m3fn expected, got {q.dtype}")
        if h % BLOCK or tuple(s_t.shape) != (h // BLOCK, t):
            raise ValueError(f"hidden_states_scale: shape {tuple(s_t.shape)}, expected the transposed "
                             f"[H/{BLOCK}, T] = [{h // BLOCK}, {t}]")
        s = s_t.double().T.repeat_interleave(BLOCK, dim=1)  # [T, H]
        x = (q.double() * s).to(torch.float32)  # one rounding of the exact float64 product
        q2, _ = quantize_fp8_act(x, BLOCK)
        if not torch.equal(q2.view(torch.uint8), q.cpu().view(torch.uint8)):
            bad = int((q2.view(torch.uint8) != q.cpu().view(torch.uint8)).sum())
            raise ValueError(f"hidden_states_scale: {bad} activations re-quantize differently (not amax / 448 "
                             f"block scales): fused_moe quantizes its activations itself and cannot take these")
        w1, w1s = named["gemm1_weights"], named["gemm1_weights_scale"]
        inter = int(w1.shape[1]) // 2
        if inter % BLOCK:
            raise ValueError(f"gemm1_weights: intermediate size {inter} is not a multiple of {BLOCK}")
        w13 = Fp8Weight(_swap_halves(w1, inter), _swap_halves(w1s.float(), inter // BLOCK), "block", (BLOCK, BLOCK))
        w2 = Fp8Weight(named["gemm2_weights"], named["gemm2_weights_scale"].float(), "block", (BLOCK, BLOCK))
        e_local = int(w1.shape[0])
        top_k = _const(definition, named, "top_k", r"_topk(\d+)_")
        ng, kg = self._ds_groups(definition, named) if self.kind == "ds" else (None, None)
        ids_t, wts_t, off = _local_routing(self.kind, named, e_local, top_k, ng, kg)
        shape = {"tokens": t, "hidden": h, "intermediate": inter, "experts": e_local, "top_k": int(ids_t.shape[1]),
                 "dtype": "float32", "weight_format": "fp8", "group_size": None, "routing": self.kind,
                 "local_expert_offset": off}
        return Inputs(self.op, shape, (x, w13, w2, ids_t, wts_t), {}, "fp8")

    # ------------------------------------------------------------------ the contract's call -> theirs

    def implementation(self, definition, solve):
        fam = self

        def impl(x, w13, w2, topk_ids, topk_weights, *, activation="silu", w13_bias=None, w2_bias=None, **kw):
            import torch

            from kernels.ops import Unsupported
            from kernels.reference.quant import quantize_fp8_act

            if activation != "silu" or w13_bias is not None or w2_bias is not None:
                raise Unsupported(f"activation: {definition.name} is SiLU-and-mul without biases")
            if getattr(w13, "granularity", None) != "block" or tuple(w13.block_size or ()) != (BLOCK, BLOCK):
                raise Unsupported(f"weights: {definition.name} takes fp8 weights in {BLOCK} x {BLOCK} blocks")
            inter = int(w2.data.shape[2])
            q, s = quantize_fp8_act(x, BLOCK)
            named = _kept_routing(definition, topk_ids)
            named.update(hidden_states=q, hidden_states_scale=s.T.contiguous(),
                         gemm1_weights=_swap_halves(w13.data, inter),
                         gemm1_weights_scale=_swap_halves(w13.scales, inter // BLOCK),
                         gemm2_weights=w2.data, gemm2_weights_scale=w2.scales)
            out = solve(named)["output"]
            return out.to(x.dtype) if isinstance(out, torch.Tensor) else out

        impl.__name__ = f"{fam.name}_solution"
        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"]}


class Bf16Moe(Family):
    """FlashInfer's ``trtllm_bf16_moe`` / ``trtllm_bf16_routed_moe`` templates <-> dense ``fused_moe``: bf16
    ``hidden_states`` and weights (x and the weight stacks as they are; gemm1's ``[up; gate]`` halves swapped),
    Default routing as its reference does it (softmax top-k on logits + bias, not renormalized, times
    ``routed_scaling_factor``), or the routed one's given ``topk_ids`` at ``routed_scaling_factor / top_k``, a
    local expert offset as above. Exact both ways; output bf16 (x's dtype). The templates have no ``init``: their
    check builds inputs (``correctness/test_trace_moe.py``). A workload asking another ``routing_method_type``
    or activation than its reference computes, or setting the SwiGLU-OA knobs, is a ``ValueError`` naming it."""

    op = "fused_moe"
    _NEED = ("routing_logits", "hidden_states", "gemm1_weights", "gemm2_weights")

    def __init__(self, routed: bool = False):
        self.kind = "routed" if routed else "default"
        self.name = "trtllm_bf16_routed_moe" if routed else "trtllm_bf16_moe"
        self.published = (self.name,)

    def covers(self, definition):
        return re.match(rf"^{self.name}(_[a-z0-9_]+)?$", definition.name) is not None

    def why_not(self, definition):
        missing = [n for n in _need(self.kind, self._NEED) if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the layout this adapter maps)"
        if set(definition.outputs) != {"output"}:
            return f"outputs {sorted(definition.outputs)}: this adapter maps one output named 'output'"
        return ""

    def _plain(self, inputs):
        return False  # our cases route by ids and weights (module docstring)

    def definition_for(self, spec, case, inputs, expected):
        return None

    def inputs_from(self, definition, named):
        import torch

        for n in (*_UNSUPPORTED_IN, "routing_method_type", "activation_type"):
            v = _scalar(named.get(n), None)
            allowed = {"routing_method_type": 0, "activation_type": 3}.get(n)
            if v is not None and (allowed is None or int(v) != allowed):
                raise ValueError(f"{n}: {v!r}; {definition.name}'s reference routes by Default (0) into SwiGLU (3) "
                                 "with no alpha, beta or clamp")
        x, w1, w2 = named["hidden_states"], named["gemm1_weights"], named["gemm2_weights"]
        if not x.dtype == w1.dtype == w2.dtype == torch.bfloat16:
            raise ValueError(f"hidden_states: bfloat16 activations and weights expected, got {x.dtype}, {w1.dtype}, "
                             f"{w2.dtype}")
        inter = int(w1.shape[1]) // 2
        top_k = _const(definition, named, "top_k", r"_topk(\d+)")
        ids_t, wts_t, off = _local_routing(self.kind, named, int(w1.shape[0]), top_k)
        shape = {"tokens": int(x.shape[0]), "hidden": int(x.shape[1]), "intermediate": inter,
                 "experts": int(w1.shape[0]), "top_k": top_k, "dtype": "bfloat16", "weight_format": "dense",
                 "group_size": None, "routing": self.kind, "local_expert_offset": off}
        return Inputs(self.op, shape, (x, _swap_halves(w1, inter), w2, ids_t, wts_t), {}, "dense")

    def implementation(self, definition, solve):
        def impl(x, w13, w2, topk_ids, topk_weights, *, activation="silu", w13_bias=None, w2_bias=None, **kw):
            from kernels.ops import Unsupported

            if activation != "silu" or w13_bias is not None or w2_bias is not None:
                raise Unsupported(f"activation: {definition.name} is SiLU-and-mul without biases")
            if not hasattr(w13, "dtype") or w13.dtype != x.dtype:
                raise Unsupported(f"weights: {definition.name} takes dense weights in x's dtype")
            named = _kept_routing(definition, topk_ids)
            named.update(hidden_states=x, gemm1_weights=_swap_halves(w13, int(w2.shape[2])), gemm2_weights=w2)
            return solve(named)["output"]

        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"]}


# ---------------------------------------------------------------------------- a Definition of the family

_REF = '''import torch

KIND, TOP_K, N_GROUP, TOPK_GROUP, BLOCK = {kind!r}, {top_k}, {n_group}, {topk_group}, 128


def _top(x, k):
    # the k largest, best first; an exact tie to the lower index (a stable descending sort)
    return x.sort(dim=-1, descending=True, stable=True).indices[:, :k]


def _route(logits, bias, rsf):
    # (ids [T, k] global, weights [T, k]) in float64
    logits = logits.to(torch.float64)
    if KIND == "ds":
        s = torch.sigmoid(logits)
        c = s + bias.to(torch.float64)  # the bias chooses, never weighs
        t, e = c.shape
        grouped = c.view(t, N_GROUP, e // N_GROUP)
        gscore = grouped.sort(dim=-1, descending=True).values[..., :2].sum(-1)
        keep = torch.zeros(t, N_GROUP, dtype=torch.bool)
        keep.scatter_(1, _top(gscore, TOPK_GROUP), True)
        c = torch.where(keep.repeat_interleave(e // N_GROUP, dim=1), c, float("-inf"))
        ids = _top(c, TOP_K)
        w = s.gather(1, ids)
        return ids, w / w.sum(-1, keepdim=True) * rsf
    if bias is not None:
        logits = logits + bias.to(torch.float64)
    ids = _top(logits, TOP_K)
    w = torch.softmax(logits.gather(1, ids), dim=-1)  # renormalized softmax top-k
    return ids, w * rsf


@torch.no_grad()
def run({params}):
    # float64 inside: activations = fp8 * their block scales (stored transposed, [H/128, T]), weights = fp8 *
    # 128 x 128 block scales; gemm1's rows are [up; gate]; h = silu(gate) * up, unquantized; experts outside
    # [local_expert_offset, local_expert_offset + E_local) add nothing; output bfloat16
    t, h = hidden_states.shape
    a = hidden_states.to(torch.float64) * hidden_states_scale.to(torch.float64).T.repeat_interleave(BLOCK, dim=1)

    def deq(w, s):
        return w.to(torch.float64) * s.to(torch.float64).repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)

    w13, w2 = deq(gemm1_weights, gemm1_weights_scale), deq(gemm2_weights, gemm2_weights_scale)
    inter = w2.shape[2]
    ids, wts = _route(routing_logits, {bias}, {rsf})
    offset = {offset}
    out = torch.zeros(t, h, dtype=torch.float64)
    for le in range(w13.shape[0]):
        tok, slot = torch.nonzero(ids == offset + le, as_tuple=True)
        if tok.numel() == 0:
            continue
        g = a[tok] @ w13[le].T
        act = torch.nn.functional.silu(g[:, inter:]) * g[:, :inter]
        out.index_add_(0, tok, (act @ w2[le].T) * wts[tok, slot][:, None])
    return out.to(torch.bfloat16)
'''


def definition(kind: str, *, num_experts: int, num_local_experts: int, hidden_size: int, intermediate_size: int,
               top_k: int, n_group: int | None = None, topk_group: int | None = None) -> Definition:
    """A Definition of the family in flashinfer-bench's layout (``ds``: DeepSeek-V3's inputs, ``renorm``:
    Qwen3-MoE's, bfloat16 logits and no bias, offset or factor) at any sizes, with a self-contained float64 torch
    reference; tests build small ones (the published constants are DeepSeek-V3's and Qwen3's full sizes)."""
    if kind not in ("ds", "renorm"):
        raise ValueError(f"kind: 'ds' or 'renorm' (flashinfer-bench's two layouts), got {kind!r}")
    if hidden_size % BLOCK or intermediate_size % BLOCK:
        raise ValueError(f"hidden_size, intermediate_size: multiples of {BLOCK}")
    e_axis = "num_experts" if kind == "ds" else "num_local_experts"
    name = (f"moe_fp8_block_scale_ds_routing_topk{top_k}_ng{n_group}_kg{topk_group}_e{num_local_experts}"
            if kind == "ds" else f"moe_fp8_block_scale_renorm_topk{top_k}_e{num_local_experts}")
    name += f"_h{hidden_size}_i{intermediate_size}"
    c = lambda v, d=None: Axis("const", int(v), description=d)  # noqa: E731
    axes = {"seq_len": Axis("var", description="tokens")}
    if kind == "ds":
        axes["num_experts"] = c(num_experts, "experts routed over (global)")
    axes.update(num_local_experts=c(num_local_experts), hidden_size=c(hidden_size),
                intermediate_size=c(intermediate_size), gemm1_out_size=c(2 * intermediate_size),
                num_hidden_blocks=c(hidden_size // BLOCK), num_intermediate_blocks=c(intermediate_size // BLOCK),
                num_gemm1_out_blocks=c(2 * intermediate_size // BLOCK))
    if kind == "renorm":
        axes["top_k"] = c(top_k)
    ins = {"routing_logits": TensorSpec(["seq_len", e_axis], "float32" if kind == "ds" else "bfloat16")}
    if kind == "ds":
        ins["routing_bias"] = TensorSpec([e_axis], "bfloat16", "selection bias (chooses, never weighs)")
    ins.update(
        hidden_states=TensorSpec(["seq_len", "hidden_size"], "float8_e4m3fn"),
        hidden_states_scale=TensorSpec(["num_hidden_blocks", "seq_len"], "float32",
                                       "block scales of hidden_states, TRANSPOSED ([H/128, T])"),
        gemm1_weights=TensorSpec(["num_local_experts", "gemm1_out_size", "hidden_size"], "float8_e4m3fn",
                                 "rows [up; gate]"),
        gemm1_weights_scale=TensorSpec(["num_local_experts", "num_gemm1_out_blocks", "num_hidden_blocks"], "float32"),
        gemm2_weights=TensorSpec(["num_local_experts", "hidden_size", "intermediate_size"], "float8_e4m3fn"),
        gemm2_weights_scale=TensorSpec(["num_local_experts", "num_hidden_blocks", "num_intermediate_blocks"],
                                       "float32"))
    if kind == "ds":
        ins["local_expert_offset"] = TensorSpec(None, "int32", "first global expert of this rank's experts")
        ins["routed_scaling_factor"] = TensorSpec(None, "float32", "the routing weights' factor")
    ref = _REF.format(kind=kind, top_k=top_k, n_group=n_group, topk_group=topk_group, params=", ".join(ins),
                      bias="routing_bias" if kind == "ds" else "None",
                      rsf="float(routed_scaling_factor)" if kind == "ds" else "1.0",
                      offset="int(local_expert_offset)" if kind == "ds" else "0")
    return Definition(
        name, "moe", axes, ins, {"output": TensorSpec(["seq_len", "hidden_size"], "bfloat16")}, ref,
        tags=["status:verified", "quantization:float8_e4m3fn", "servekernels", "servekernels:op=fused_moe"],
        description=("FP8 block-scale MoE, routing and two grouped GEMMs in one call (flashinfer-bench's "
                     f"{'DeepSeek-V3 no-aux' if kind == 'ds' else 'renormalize'} routing), at servekernels' sizes."))


class Fp8PerTensorMoe(Family):
    """flashinfer-bench's ``trtllm_fp8_per_tensor_scale_moe_topk{K}_e{E}_h{H}_i{I}`` and FlashInfer's
    ``trtllm_fp8_per_tensor_scale_moe`` / ``_routed_moe``: recognised, and never judged (``why_not``, so ``trace
    judge`` says why instead of "no adapter"; ``published`` is empty, so ``trace coverage`` does not count them).

    Their activations are fp8 with no block scale (the per-tensor scale is folded into the per-expert output
    scales). fused_moe's fp8 path quantizes x itself per 128-group (amax / 448), which reproduces the given fp8
    values only where a group's largest |value| is 448 * 2**-j; the dense path would need fp8 * scale exact in
    x's dtype (bf16: a scale of at most 4 significant bits). Neither holds for per-tensor quantized inputs.
    (FlashInfer's template and flashinfer-bench's definition also disagree on which gemm1 half
    ``output1_scales_gate_scalar`` scales: the note of this adapter's author records it.)"""

    name = "trtllm_fp8_per_tensor_scale_moe"
    op = "fused_moe"
    published = ()

    def covers(self, definition):
        return re.match(r"^trtllm_fp8_per_tensor_scale(_routed)?_moe(_[a-z0-9_]+)?$", definition.name) is not None

    def why_not(self, definition):
        return ("fp8 activations without block scales: fused_moe quantizes x itself per 128-group (amax / 448), "
                "which does not reproduce per-tensor quantized values, and fp8 * per-expert scale is not exact in "
                "a dense x dtype")

    def _plain(self, inputs):
        return False

    def definition_for(self, spec, case, inputs, expected):
        return None
