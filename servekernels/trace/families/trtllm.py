"""FlashInfer's ``trtllm_batch_decode`` <-> ``paged_decode`` and ``trtllm_batch_context`` <-> ``paged_prefill``.

``trtllm_batch_decode_h{H}_kv{KV}_d{D}_ps{PS}`` (``trtllm_batch_decode_with_kv_cache``, TRT-LLM's SM100 decode)
takes ``query`` ``[num_tokens, H, D]``, one ``kv_cache`` ``[num_pages, kv_cache_dim, KV, PS, D]`` in the HND
layout (``kv_layout`` is a call keyword the template does not list: its default, HND), ``block_tables``
``[batch, max_pages]`` and ``seq_lens`` (the contract's own block-table form), ``max_seq_len``, and the scales
``bmm1_scale`` (on the logits; default ``1/sqrt(D)``) and ``bmm2_scale`` (on the output). It returns ``output``
in the query's dtype, no LSE.

Mapping rules:

- theirs -> ours (``inputs_from``): ``kv_cache[:, 0]`` / ``[:, 1]`` are K / V (``kv_cache_dim`` 2), each
  ``[num_pages, KV, PS, D]`` transposed to the contract's ``[num_pages, PS, KV, D]`` (a view), ``block_tables``
  -> ``block_table``, ``bmm1_scale`` -> ``scale``; ``bmm2_scale`` must be 1 (the contract has no output scale)
  and ``num_tokens == batch_size`` (one query per request: FlashInfer's reference attends a request's several
  speculative queries to every key, non-causally, which no contract op does): otherwise a ``ValueError``;
- ours -> theirs (``named``, ``implementation``): K and V stacked on dim 1 in HND, the block table as it is
  (entries past a sequence's last page stay -1 or out of range: the kernel must not read them),
  ``max_seq_len`` the longest sequence, ``bmm1_scale`` the call's scale, ``bmm2_scale`` 1;
- exported: the plain ``paged_decode`` cases (no window, soft-cap, fp8 cache or sinks), named as FlashInfer's
  dump names them plus ``_<dtype>`` when not bfloat16; ``request_order`` (optional) is left out.
- not judged: ``kv_cache_dim`` other than 2 (K and V interleaved along the heads).

``trtllm_batch_context_h{H}_kv{KV}_d{D}_ps{PS}`` (the prefill twin) <-> ``paged_prefill``: the same cache rules,
plus ``cum_seq_lens_q`` <-> ``query_start_loc``, ``causal``, ``window_left`` (``TrtllmBatchContext``).
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import require_plain_attention
from servekernels.trace.families._base import Family, dtype_name, is_tensor, slug

_DECODE = re.compile(r"^trtllm_batch_decode_h(\d+)_kv(\d+)_d(\d+)_ps(\d+)(_[a-z0-9]+)?$")
_NEED = ("query", "kv_cache", "block_tables", "seq_lens")

TRTLLM_DECODE_REF = '''import torch


@torch.no_grad()
def run(query, kv_cache, block_tables, seq_lens, max_seq_len, bmm1_scale, bmm2_scale):
    # float64 inside; kv_cache [num_pages, 2, num_kv_heads, page_size, head_dim] (HND): K = [:, 0], V = [:, 1];
    # request b's one query (row b) sees its seq_lens[b] keys; no key: output 0
    num_tokens, num_heads, head_dim = query.shape
    page_size, num_kv_heads = kv_cache.shape[3], kv_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros(query.shape, dtype=torch.float64)
    for b in range(block_tables.shape[0]):
        n = int(seq_lens[b])
        if n == 0:
            continue
        pages = block_tables[b, :(n + page_size - 1) // page_size].long()
        k = kv_cache[pages, 0].transpose(1, 2).reshape(-1, num_kv_heads, head_dim)[:n].to(torch.float64)
        v = kv_cache[pages, 1].transpose(1, 2).reshape(-1, num_kv_heads, head_dim)[:n].to(torch.float64)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        s = torch.einsum("hd,khd->hk", query[b].to(torch.float64), k) * float(bmm1_scale)
        out[b] = torch.einsum("hk,khd->hd", torch.softmax(s, dim=-1), v) * float(bmm2_scale)
    return out.to(query.dtype)
'''


def _scalar(x):
    return None if x is None else float(x.item() if is_tensor(x) else x)


class TrtllmBatchDecode(Family):
    """FlashInfer's ``trtllm_batch_decode`` <-> ``paged_decode`` (rules: the module docstring)."""

    name = "trtllm_batch_decode"
    op = "paged_decode"
    published = ("trtllm_batch_decode",)

    def covers(self, definition):
        return bool(_DECODE.match(definition.name))

    def why_not(self, definition):
        missing = [n for n in _NEED if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the TRT-LLM paged layout this adapter maps)"
        if "output" not in definition.outputs:
            return "no output named 'output'"
        unknown = [n for n, s in definition.inputs.items()
                   if n not in set(_NEED) | {"max_seq_len", "bmm1_scale", "bmm2_scale"} and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the paged-attention contract"
        kv_dim = definition.axes.get("kv_cache_dim")
        if kv_dim is not None and kv_dim.value not in (None, 2):
            return (f"kv_cache_dim {kv_dim.value}: K and V interleaved along the heads (this adapter maps 2: "
                    "K, V halves)")
        return ""

    def _plain(self, inputs: Inputs) -> bool:
        kw = inputs.kwargs
        q, k = inputs.args[0], inputs.args[1]
        return (not kw.get("sliding_window") and not kw.get("soft_cap") and kw.get("sinks") is None
                and float(kw.get("k_scale", 1.0)) == 1.0 and float(kw.get("v_scale", 1.0)) == 1.0
                and k.dtype == q.dtype)

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        q, k_cache = inputs.args[0], inputs.args[1]
        h, d, kv, ps = q.shape[1], q.shape[2], k_cache.shape[2], k_cache.shape[1]
        dt = dtype_name(q)
        name = f"trtllm_batch_decode_h{h}_kv{kv}_d{d}_ps{ps}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"num_tokens": Axis("var", description="query tokens (one per request)"),
                "num_heads": Axis("const", h), "num_kv_heads": Axis("const", kv), "head_dim": Axis("const", d),
                "page_size": Axis("const", ps), "num_pages": Axis("var"),
                "kv_cache_dim": Axis("const", 2, description="2: K and V halves"), "batch_size": Axis("var"),
                "max_pages_per_seq": Axis("var", description="block_tables width")}
        ins = {"query": TensorSpec(["num_tokens", "num_heads", "head_dim"], dt),
               "kv_cache": TensorSpec(["num_pages", "kv_cache_dim", "num_kv_heads", "page_size", "head_dim"], dt,
                                      "paged KV cache, HND: K = [:, 0], V = [:, 1]"),
               "block_tables": TensorSpec(["batch_size", "max_pages_per_seq"], "int32", "page table per request"),
               "seq_lens": TensorSpec(["batch_size"], "int32", "K/V length per request"),
               "max_seq_len": TensorSpec(None, "int32", "longest K/V length"),
               "bmm1_scale": TensorSpec(None, "float32", "scale on q.k"),
               "bmm2_scale": TensorSpec(None, "float32", "scale on softmax.v")}
        outs = {"output": TensorSpec(["num_tokens", "num_heads", "head_dim"], dt)}
        return Definition(
            name, "trtllm_paged", axes, ins, outs, TRTLLM_DECODE_REF,
            tags=["stage:decode", "status:verified", "servekernels", f"servekernels:op={self.op}"],
            description=("TRT-LLM paged GQA decode (FlashInfer's trtllm_batch_decode_with_kv_cache), one query per "
                         "request, exported by servekernels from its paged_decode op."),
            constraints=["num_tokens == batch_size"])

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        lens = b.seq_lens.cpu()
        return {"query": b.q,
                "kv_cache": torch.stack([b.k_cache, b.v_cache], dim=1).transpose(2, 3).contiguous(),
                "block_tables": b.block_table.to(torch.int32), "seq_lens": b.seq_lens.to(torch.int32),
                "max_seq_len": int(lens.max()) if len(lens) else 0,
                "bmm1_scale": float(b.kwargs.get("scale") or b.q.shape[-1] ** -0.5), "bmm2_scale": 1.0}

    def inputs_from(self, definition, named):
        import torch

        from kernels.testing.paged import PagedBatch

        q, kv, table, lens = named["query"], named["kv_cache"], named["block_tables"], named["seq_lens"]
        if kv.dim() != 5 or kv.shape[1] != 2:
            raise ValueError(f"kv_cache: shape {tuple(kv.shape)}, this adapter maps [num_pages, 2, KV, PS, D]")
        if q.shape[0] != table.shape[0]:
            raise ValueError(f"query: {q.shape[0]} tokens for {table.shape[0]} requests; FlashInfer's reference "
                             "attends several queries of a request non-causally, which no contract op does")
        bmm2 = _scalar(named.get("bmm2_scale"))
        if bmm2 not in (None, 1.0):
            raise ValueError(f"bmm2_scale: {bmm2}; the contract has no output scale")
        kwargs = {}
        bmm1 = _scalar(named.get("bmm1_scale"))
        if bmm1 is not None:
            kwargs["scale"] = bmm1
        k_cache, v_cache = kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2)  # HND -> NHD views
        nseq = int(table.shape[0])
        batch = PagedBatch(q, k_cache, v_cache, table.to(torch.int32), lens.to(torch.int32),
                           torch.arange(nseq + 1, dtype=torch.int32, device=q.device), kwargs)
        return Inputs(self.op, {"num_seqs": nseq, "block_size": int(kv.shape[3])}, batch.decode_args(),
                      dict(kwargs), batch)

    def implementation(self, definition, solve):
        fam = self

        def impl(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, return_lse=False, **kw):
            import torch

            from kernels.ops import Unsupported
            from kernels.testing.paged import PagedBatch

            require_plain_attention(definition, kw)
            if k_cache.dtype != q.dtype:
                raise Unsupported(f"fp8_kv: {definition.name}'s cache is in the query's dtype")
            if return_lse:
                raise Unsupported("return_lse: the definition has no lse output")
            batch = PagedBatch(q, k_cache, v_cache, block_table, seq_lens,
                               torch.arange(len(seq_lens) + 1, dtype=torch.int32), {"scale": scale} if scale else {})
            return solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))["output"]

        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"]} if is_tensor(outputs.get("out")) else {}


_CONTEXT = re.compile(r"^trtllm_batch_context_h(\d+)_kv(\d+)_d(\d+)_ps(\d+)(_[a-z0-9]+)?$")
_CONTEXT_NEED = ("query", "kv_cache", "block_tables", "seq_lens", "cum_seq_lens_q")
_CONTEXT_KNOWN = set(_CONTEXT_NEED) | {"max_q_len", "max_kv_len", "bmm1_scale", "bmm2_scale", "batch_size_scalar",
                                      "cum_seq_lens_kv", "window_left", "causal", "window_right"}

TRTLLM_CONTEXT_REF = '''import torch


@torch.no_grad()
def run(query, kv_cache, block_tables, seq_lens, max_q_len, max_kv_len, bmm1_scale, bmm2_scale, batch_size_scalar,
        cum_seq_lens_q, cum_seq_lens_kv):
    # float64 inside; kv_cache HND: K = [:, 0], V = [:, 1]; request b's queries cum_seq_lens_q[b]:[b+1] sit at
    # the end of its seq_lens[b] keys, causal (query j of q_len sees keys t <= seq_len - q_len + j)
    num_tokens, num_heads, head_dim = query.shape
    page_size, num_kv_heads = kv_cache.shape[3], kv_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros(query.shape, dtype=torch.float64)
    for b in range(block_tables.shape[0]):
        n, q0, q1 = int(seq_lens[b]), int(cum_seq_lens_q[b]), int(cum_seq_lens_q[b + 1])
        if n == 0 or q1 == q0:
            continue
        pages = block_tables[b, :(n + page_size - 1) // page_size].long()
        k = kv_cache[pages, 0].transpose(1, 2).reshape(-1, num_kv_heads, head_dim)[:n].to(torch.float64)
        v = kv_cache[pages, 1].transpose(1, 2).reshape(-1, num_kv_heads, head_dim)[:n].to(torch.float64)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->qhk", query[q0:q1].to(torch.float64), k) * float(bmm1_scale)
        visible = torch.arange(n)[None, :] <= (n - (q1 - q0) + torch.arange(q1 - q0))[:, None]
        s = s.masked_fill(~visible[:, None, :], float("-inf"))
        out[q0:q1] = torch.einsum("qhk,khd->qhd", torch.softmax(s, dim=-1), v) * float(bmm2_scale)
    return out.to(query.dtype)
'''


class TrtllmBatchContext(TrtllmBatchDecode):
    """FlashInfer's ``trtllm_batch_context`` (the prefill twin: ``cum_seq_lens_q``, causal by default) <->
    ``paged_prefill``. As ``trtllm_batch_decode`` (module docstring), plus: ``cum_seq_lens_q`` ->
    ``query_start_loc``; ``causal`` must be true (or absent: the template's default); ``window_left`` ``w >= 0``
    -> ``sliding_window = w + 1`` (FlashInfer's query sees keys ``>= pos - w``, the contract's ``> pos - window``);
    a variable per-token window, or a request with more queries than keys (FlashInfer's reference then aligns
    its queries top-left), is a ``ValueError``; ``cum_seq_lens_kv`` and the max/batch scalars are not read (the
    reference does not read them either)."""

    name = "trtllm_batch_context"
    op = "paged_prefill"
    published = ("trtllm_batch_context",)

    def covers(self, definition):
        return bool(_CONTEXT.match(definition.name))

    def why_not(self, definition):
        missing = [n for n in _CONTEXT_NEED if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the TRT-LLM paged layout this adapter maps)"
        if "output" not in definition.outputs:
            return "no output named 'output'"
        unknown = [n for n, s in definition.inputs.items() if n not in _CONTEXT_KNOWN and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the paged-attention contract"
        kv_dim = definition.axes.get("kv_cache_dim")
        if kv_dim is not None and kv_dim.value not in (None, 2):
            return (f"kv_cache_dim {kv_dim.value}: K and V interleaved along the heads (this adapter maps 2: "
                    "K, V halves)")
        return ""

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        d = super().definition_for(spec, case, inputs, expected)
        d.name = d.name.replace("trtllm_batch_decode", "trtllm_batch_context")
        d.axes["num_tokens"] = Axis("var", description="query tokens over all requests")
        d.axes["batch_size_plus_1_q"] = Axis("var", description="batch_size + 1")
        d.axes["batch_size_plus_1_kv"] = Axis("var", description="batch_size + 1")
        ins = dict(d.inputs)
        del ins["max_seq_len"]
        d.inputs = {**{k: ins[k] for k in ("query", "kv_cache", "block_tables", "seq_lens")},
                    "max_q_len": TensorSpec(None, "int32", "longest query run"),
                    "max_kv_len": TensorSpec(None, "int32", "longest K/V length"),
                    "bmm1_scale": ins["bmm1_scale"], "bmm2_scale": ins["bmm2_scale"],
                    "batch_size_scalar": TensorSpec(None, "int32", "requests"),
                    "cum_seq_lens_q": TensorSpec(["batch_size_plus_1_q"], "int32", "query offsets per request"),
                    "cum_seq_lens_kv": TensorSpec(["batch_size_plus_1_kv"], "int32", "K/V offsets per request")}
        d.reference = TRTLLM_CONTEXT_REF
        d.tags = ["stage:prefill", "status:verified", "servekernels", f"servekernels:op={self.op}"]
        d.description = ("TRT-LLM paged GQA causal prefill (FlashInfer's trtllm_batch_context_with_kv_cache), "
                         "exported by servekernels from its paged_prefill op; queries bottom-right aligned.")
        d.constraints = ["num_tokens == cum_seq_lens_q[-1].item()"]
        return d

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        out = super().named(definition, inputs)
        qsl = b.query_start_loc.cpu().to(torch.int32)
        lens = b.seq_lens.cpu().to(torch.int32)
        kv = torch.zeros(len(lens) + 1, dtype=torch.int32)
        kv[1:] = torch.cumsum(lens, 0)
        del out["max_seq_len"]
        out.update(max_q_len=int((qsl[1:] - qsl[:-1]).max()) if len(lens) else 0,
                   max_kv_len=int(lens.max()) if len(lens) else 0, batch_size_scalar=len(lens),
                   cum_seq_lens_q=qsl, cum_seq_lens_kv=kv)
        if "window_left" in definition.inputs:
            window = b.kwargs.get("sliding_window")
            out["window_left"] = int(window) - 1 if window else -1
        if "causal" in definition.inputs:
            out["causal"] = True
        return out

    def inputs_from(self, definition, named):
        import torch

        from kernels.testing.paged import PagedBatch

        q, kv, table, lens = named["query"], named["kv_cache"], named["block_tables"], named["seq_lens"]
        if kv.dim() != 5 or kv.shape[1] != 2:
            raise ValueError(f"kv_cache: shape {tuple(kv.shape)}, this adapter maps [num_pages, 2, KV, PS, D]")
        qsl = named["cum_seq_lens_q"].cpu().to(torch.int32)
        if len(qsl) != table.shape[0] + 1:
            raise ValueError(f"cum_seq_lens_q: {len(qsl)} entries for {table.shape[0]} requests")
        if bool(((qsl[1:] - qsl[:-1]) > lens.cpu()).any()):
            raise ValueError("cum_seq_lens_q: a request has more queries than keys (FlashInfer's reference then "
                             "aligns its queries top-left; the contract places every query at or after key 0)")
        if named.get("causal") is not None and not bool(_scalar(named["causal"])):
            raise ValueError("causal: false; paged_prefill is causal")
        for n in ("variable_window_token_starts", "variable_window_token_ends"):
            if named.get(n) is not None:
                raise ValueError(f"{n}: a per-token window has no counterpart in the contract")
        bmm2 = _scalar(named.get("bmm2_scale"))
        if bmm2 not in (None, 1.0):
            raise ValueError(f"bmm2_scale: {bmm2}; the contract has no output scale")
        kwargs = {}
        bmm1 = _scalar(named.get("bmm1_scale"))
        if bmm1 is not None:
            kwargs["scale"] = bmm1
        w = _scalar(named.get("window_left"))
        if w is not None and w >= 0:
            kwargs["sliding_window"] = int(w) + 1
        k_cache, v_cache = kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2)  # HND -> NHD views
        batch = PagedBatch(q, k_cache, v_cache, table.to(torch.int32), lens.to(torch.int32), qsl.to(q.device),
                           kwargs)
        return Inputs(self.op, {"num_seqs": int(table.shape[0]), "block_size": int(kv.shape[3])},
                      batch.prefill_args(), dict(kwargs), batch)

    def implementation(self, definition, solve):
        fam = self

        def impl(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, return_lse=False,
                 **kw):
            from kernels.ops import Unsupported
            from kernels.testing.paged import PagedBatch

            if kw.get("sliding_window") and "window_left" not in definition.inputs:
                raise Unsupported(f"sliding_window: {definition.name} has no window_left input")
            if kw.get("soft_cap") or float(kw.get("k_scale", 1.0)) != 1.0 \
                    or float(kw.get("v_scale", 1.0)) != 1.0 or kw.get("sinks") is not None:
                raise Unsupported(f"features: {definition.name} has no soft-cap, fp8 scale or sinks")
            if k_cache.dtype != q.dtype:
                raise Unsupported(f"fp8_kv: {definition.name}'s cache is in the query's dtype")
            if return_lse:
                raise Unsupported("return_lse: the definition has no lse output")
            call = {"scale": scale} if scale else {}
            if kw.get("sliding_window"):
                call["sliding_window"] = kw["sliding_window"]
            batch = PagedBatch(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, call)
            return solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))["output"]

        return impl
