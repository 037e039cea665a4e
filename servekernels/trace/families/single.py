"""FlashInfer's ``single_decode`` template <-> ``paged_decode`` with one sequence; ``single_prefill`` explained.

``single_decode_h{H}_kv{KV}_d{D}`` (``flashinfer.single_decode_with_kv_cache``) takes ``q`` ``[H, D]`` (no batch
dim) and one request's contiguous ``k``/``v`` ``[kv_len, KV, D]`` and returns ``output`` ``[H, D]`` in q's dtype
(no LSE). Its fi_trace dump has no ``sm_scale`` input (a ``run()`` keyword the template does not list), so its
reference uses the default ``1/sqrt(D)``; a Definition that does list ``sm_scale`` gets it honoured.

Mapping rules:

- theirs -> ours (``inputs_from``): one sequence, ``q[None]``, the run as a page-size-1 cache (``k[:, None]``,
  block table ``arange(kv_len)``), ``seq_lens = [kv_len]``, ``scale`` = ``sm_scale`` where given;
- ours -> theirs (``named``, ``implementation``, ``theirs``): the sequence's owned slots gathered into one run,
  ``q[0]``, the Solution's output given its batch dim back; the contract's LSE has no counterpart (reported as
  not provided);
- exported: the plain single-sequence ``paged_decode`` cases at the default scale (``sm_scale`` is not an input
  of the published layout), named ``single_decode_h{H}_kv{KV}_d{D}`` plus ``_<dtype>`` when not bfloat16.

``single_prefill_h{H}_kv{KV}_d{D}`` is covered but not judged: its fi_trace dump has inputs ``q, k, v`` only, so
it does not say whether the call was causal (``causal`` is a ``run()`` keyword; the dumped reference defaults it
to False, the template's own init passes True), and ``paged_prefill`` is causal. ``why_not`` says so; a
Definition listing a ``causal`` input is not published by either project yet.
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace import references as REF
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import require_plain_attention
from servekernels.trace.families._base import Family, Template, dtype_name, is_tensor, slug
from servekernels.trace.families.gqa_ragged import paged_from_ragged, ragged_from_paged

_SINGLE_DECODE = re.compile(r"^single_decode_h(\d+)_kv(\d+)_d(\d+)(_[a-z0-9]+)?$")
_SINGLE_PREFILL = re.compile(r"^single_prefill_h(\d+)_kv(\d+)_d(\d+)(_[a-z0-9]+)?$")

SINGLE_DECODE_RUN = '''

@torch.no_grad()
def run(q, k, v):
    # float64 inside; the one query sees every key; sm_scale 1/sqrt(head_dim); no key: output 0
    n = k.shape[0]
    if n == 0:
        return torch.zeros(q.shape, dtype=q.dtype)
    out, _ = _attend(q[None].to(torch.float64), k.to(torch.float64), v.to(torch.float64),
                     torch.tensor([n - 1]), q.shape[-1] ** -0.5)
    return out[0].to(q.dtype)
'''


class SingleDecode(Family):
    """FlashInfer's ``single_decode`` <-> ``paged_decode`` with one sequence (rules: the module docstring)."""

    name = "single_decode"
    op = "paged_decode"
    published = ("single_decode",)
    templates = (Template("attention", "single_decode_with_kv_cache_trace",
                          dict(kv_len=37, num_qo_heads=8, num_kv_heads=2, head_dim=64), ("q", "k", "v")),)

    def covers(self, definition):
        return bool(_SINGLE_DECODE.match(definition.name))

    def fit_draw(self, drawn, base):
        """One request: the draw's longest sequence."""
        return {**drawn, "seq_len": [max(drawn["seq_len"])], "num_seqs": 1}

    def why_not(self, definition):
        missing = [n for n in ("q", "k", "v") if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the single-request layout this adapter maps)"
        if "output" not in definition.outputs:
            return "no output named 'output'"
        unknown = [n for n, s in definition.inputs.items() if n not in {"q", "k", "v", "sm_scale"} and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the paged-attention contract"
        return ""

    def _plain(self, inputs: Inputs) -> bool:
        kw = inputs.kwargs
        q, k = inputs.args[0], inputs.args[1]
        scale = kw.get("scale")
        return (int(q.shape[0]) == 1 and not kw.get("sliding_window") and not kw.get("soft_cap")
                and kw.get("sinks") is None and float(kw.get("k_scale", 1.0)) == 1.0
                and float(kw.get("v_scale", 1.0)) == 1.0 and k.dtype == q.dtype
                and (scale is None or float(scale) == q.shape[-1] ** -0.5))

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        q, k_cache = inputs.args[0], inputs.args[1]
        h, d, kv = q.shape[1], q.shape[2], k_cache.shape[2]
        dt = dtype_name(q)
        name = f"single_decode_h{h}_kv{kv}_d{d}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"num_qo_heads": Axis("const", h), "num_kv_heads": Axis("const", kv), "head_dim": Axis("const", d),
                "kv_len": Axis("var", description="length of the K/V context")}
        ins = {"q": TensorSpec(["num_qo_heads", "head_dim"], dt),
               "k": TensorSpec(["kv_len", "num_kv_heads", "head_dim"], dt),
               "v": TensorSpec(["kv_len", "num_kv_heads", "head_dim"], dt)}
        outs = {"output": TensorSpec(["num_qo_heads", "head_dim"], dt)}
        return Definition(
            name, "single_decode", axes, ins, outs, REF.GQA_PAGED.lstrip() + SINGLE_DECODE_RUN,
            tags=["stage:decode", "status:verified", "servekernels", f"servekernels:op={self.op}"],
            description=("Single-request GQA decode over contiguous K/V (FlashInfer's single_decode_with_kv_cache), "
                         "exported by servekernels from a one-sequence case of its paged_decode op; softmax scale "
                         "1/sqrt(head_dim)."))

    def named(self, definition, inputs):
        b = inputs.data
        if int(b.q.shape[0]) != 1:
            raise ValueError(f"q: {definition.name} takes one request, got {int(b.q.shape[0])} sequences")
        k, v, _ = ragged_from_paged(b.k_cache, b.v_cache, b.block_table, b.seq_lens)
        out = {"q": b.q[0], "k": k, "v": v}
        if "sm_scale" in definition.inputs:
            out["sm_scale"] = float(b.kwargs.get("scale") or b.q.shape[-1] ** -0.5)
        return out

    def inputs_from(self, definition, named):
        import torch

        from kernels.testing.paged import PagedBatch

        q, k = named["q"], named["k"]
        k_cache, v_cache, table, lens = paged_from_ragged(k, named["v"],
                                                          torch.tensor([0, int(k.shape[0])], dtype=torch.int32))
        kwargs = {}
        scale = named.get("sm_scale")
        if scale is not None:
            kwargs["scale"] = float(scale.item() if is_tensor(scale) else scale)
        batch = PagedBatch(q[None], k_cache, v_cache, table, lens, torch.tensor([0, 1], dtype=torch.int32), kwargs)
        return Inputs(self.op, {"num_seqs": 1, "block_size": 1}, batch.decode_args(), dict(kwargs), batch)

    def implementation(self, definition, solve):
        fam = self

        def impl(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, return_lse=False, **kw):
            import torch

            from kernels.ops import Unsupported
            from kernels.testing.paged import PagedBatch

            require_plain_attention(definition, kw)
            if int(q.shape[0]) != 1:
                raise Unsupported(f"batch: {definition.name} takes one request")
            if scale is not None and float(scale) != q.shape[-1] ** -0.5 and "sm_scale" not in definition.inputs:
                raise Unsupported(f"scale: {definition.name} has no sm_scale input (1/sqrt(head_dim) only)")
            if return_lse:
                raise Unsupported("return_lse: the definition has no lse output")
            batch = PagedBatch(q, k_cache, v_cache, block_table, seq_lens, torch.tensor([0, 1], dtype=torch.int32),
                               {"scale": scale} if scale else {})
            return solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))["output"][None]

        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"][0]} if is_tensor(outputs.get("out")) else {}


class SinglePrefill(Family):
    """FlashInfer's ``single_prefill``: covered, not judged (why: the module docstring)."""

    name = "single_prefill"
    op = "paged_prefill"
    published = ()  # not judged: its Definitions do not say whether the call is causal

    def covers(self, definition):
        return bool(_SINGLE_PREFILL.match(definition.name))

    def why_not(self, definition):
        return ("single_prefill's Definition does not say whether the call is causal (causal is a run() keyword "
                "its inputs lack; its reference then computes non-causal attention), and paged_prefill is causal")

    def _plain(self, inputs):
        return False

    def definition_for(self, spec, case, inputs, expected):
        return None
