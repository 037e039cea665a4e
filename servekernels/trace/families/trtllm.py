"""FlashInfer's ``trtllm_batch_decode`` template <-> ``paged_decode``.

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
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
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

            if kw.get("sliding_window") or kw.get("soft_cap") or float(kw.get("k_scale", 1.0)) != 1.0 \
                    or float(kw.get("v_scale", 1.0)) != 1.0 or kw.get("sinks") is not None:
                raise Unsupported(f"features: {definition.name} has no window, soft-cap, fp8 scale or sinks")
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
