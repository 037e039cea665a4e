"""flashinfer-bench's paged GQA decode / causal prefill <-> ``paged_decode`` / ``paged_prefill``."""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace import references as REF
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import require_plain_attention
from servekernels.trace.families._base import (Base2Lse, LN2, Template, block_table_from_csr, csr_from_block_table,
                                               dtype_name, slug)

_GQA = re.compile(r"^gqa_paged_(decode|prefill)(_causal)?_h(\d+)_kv(\d+)_d(\d+)_ps(\d+)(_[a-z0-9]+)?$")


class GqaPaged(Base2Lse):
    """flashinfer-bench's paged GQA decode/prefill <-> ``paged_decode`` / ``paged_prefill``."""

    def __init__(self, decode: bool):
        self.decode = decode
        self.op = "paged_decode" if decode else "paged_prefill"
        self.name = "gqa_paged_decode" if decode else "gqa_paged_prefill_causal"
        self.published = (self.name,) if decode else (self.name, "gqa_paged_prefill")  # + the template prefix
        self.templates = ((Template("attention", "gqa_paged_decode_trace", dict(batch_size=3, num_pages_per_seq=3),
                                    ("q", "k_cache", "v_cache", "kv_indptr", "kv_indices", "sm_scale")),) if decode
                          else (Template("attention", "gqa_paged_prefill_trace",
                                         dict(total_q=11, batch_size=3, num_pages_per_seq=2),
                                         ("q", "k_cache", "v_cache", "qo_indptr", "kv_indptr", "kv_indices",
                                          "sm_scale")),))

    def template_named(self, template, init):
        plan, run = init["plan"], init["run"]
        k, v = run["paged_kv_cache"]
        named = {"q": run["q"], "k_cache": k, "v_cache": v,
                 "kv_indptr": plan.get("indptr", plan.get("paged_kv_indptr")),
                 "kv_indices": plan.get("indices", plan.get("paged_kv_indices")),
                 "kv_last_page_len": plan.get("last_page_len", plan.get("paged_kv_last_page_len")),
                 "sm_scale": run["q"].shape[-1] ** -0.5}
        if "qo_indptr" in plan:
            named["qo_indptr"] = plan["qo_indptr"]
        return named

    def covers(self, definition: Definition) -> bool:
        m = _GQA.match(definition.name)
        return bool(m) and (m.group(1) == "decode") == self.decode

    def why_not(self, definition: Definition) -> str:
        need = {"q", "k_cache", "v_cache", "kv_indptr", "kv_indices"} | (set() if self.decode else {"qo_indptr"})
        missing = sorted(need - set(definition.inputs))
        if missing:
            return f"inputs {missing} missing (the page-list layout this adapter maps)"
        if "output" not in definition.outputs:
            return "no output named 'output'"
        unknown = [n for n, s in definition.inputs.items()
                   if n not in need | {"kv_last_page_len", "sm_scale", "return_lse"} and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the paged-attention contract"
        return ""

    def _plain(self, inputs: Inputs) -> bool:
        kw = inputs.kwargs
        q, k = inputs.args[0], inputs.args[1]
        return (not kw.get("sliding_window") and not kw.get("soft_cap") and kw.get("sinks") is None
                and float(kw.get("k_scale", 1.0)) == 1.0
                and float(kw.get("v_scale", 1.0)) == 1.0 and k.dtype == q.dtype)

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        q, k_cache = inputs.args[0], inputs.args[1]
        h, d = q.shape[1], q.shape[2]
        kv, ps = k_cache.shape[2], k_cache.shape[1]
        stage = "decode" if self.decode else "prefill_causal"
        name = f"gqa_paged_{stage}_h{h}_kv{kv}_d{d}_ps{ps}"
        dt = dtype_name(q)
        if dt != "bfloat16":
            name += f"_{slug(dt)}"  # flashinfer-bench's names are bfloat16; another dtype is another definition
        tokens = "batch_size" if self.decode else "total_q"
        axes = {tokens: Axis("var", description="query tokens" if not self.decode else "sequences (one query each)"),
                "num_qo_heads": Axis("const", h), "num_kv_heads": Axis("const", kv), "head_dim": Axis("const", d),
                "num_pages": Axis("var"), "page_size": Axis("const", ps), "len_indptr": Axis("var"),
                "num_kv_indices": Axis("var")}
        ins = {"q": TensorSpec([tokens, "num_qo_heads", "head_dim"], dt),
               "k_cache": TensorSpec(["num_pages", "page_size", "num_kv_heads", "head_dim"], dt),
               "v_cache": TensorSpec(["num_pages", "page_size", "num_kv_heads", "head_dim"], dt)}
        if not self.decode:
            ins["qo_indptr"] = TensorSpec(["len_indptr"], "int32", "query offsets per sequence")
        ins["kv_indptr"] = TensorSpec(["len_indptr"], "int32", "page offsets per sequence into kv_indices")
        ins["kv_indices"] = TensorSpec(["num_kv_indices"], "int32", "page ids")
        if ps > 1:
            if not self.decode:
                axes["batch_size"] = Axis("var", description="sequences")
            ins["kv_last_page_len"] = TensorSpec(
                ["batch_size"], "int32", "valid tokens in each sequence's last page (1..page_size; 0 when empty)")
        ins["sm_scale"] = TensorSpec(None, "float32", "softmax scale (logit = sm_scale * q.k)")
        outs = {"output": TensorSpec([tokens, "num_qo_heads", "head_dim"], dt),
                "lse": TensorSpec([tokens, "num_qo_heads"], "float32", "log-sum-exp of the logits, base 2")}
        params = ", ".join(ins)
        last = "kv_last_page_len" if "kv_last_page_len" in ins else "None"
        run = (REF.GQA_DECODE_RUN if self.decode else REF.GQA_PREFILL_RUN).format(params=params, last=last)
        constraints = ["len_indptr == batch_size + 1" if self.decode else "total_q == qo_indptr[-1].item()",
                       "num_kv_indices == kv_indptr[-1].item()"]
        return Definition(
            name, "gqa_paged", axes, ins, outs, REF.GQA_PAGED.lstrip() + run,
            tags=[f"stage:{'decode' if self.decode else 'prefill'}", "status:verified", "servekernels",
                  f"servekernels:op={self.op}"],
            description=(f"Batched GQA {'decode (one query per sequence)' if self.decode else 'causal prefill'} over a "
                         "paged KV cache (page lists as CSR kv_indptr/kv_indices), exported by servekernels from "
                         f"its {self.op} op; LSE in base 2 (FlashInfer's); an empty sequence gives output 0 and "
                         "LSE -inf."),
            constraints=constraints)

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        ps = b.k_cache.shape[1]
        out = {"q": b.q, "k_cache": b.k_cache, "v_cache": b.v_cache}
        if not self.decode:
            out["qo_indptr"] = b.query_start_loc.cpu().to(torch.int32)
        out.update(csr_from_block_table(b.block_table, b.seq_lens, ps, "kv_last_page_len" in definition.inputs))
        out["sm_scale"] = float(b.kwargs.get("scale") or b.q.shape[-1] ** -0.5)
        if "return_lse" in definition.inputs:
            out["return_lse"] = 1
        return out

    def inputs_from(self, definition, named):
        import torch

        from kernels.testing.paged import PagedBatch

        q, kc = named["q"], named["k_cache"]
        ps = kc.shape[1]
        table, lens = block_table_from_csr(named, ps)
        nseq = len(lens)
        qsl = (torch.arange(nseq + 1, dtype=torch.int32) if self.decode
               else named["qo_indptr"].cpu().to(torch.int32))
        kwargs = {}
        if named.get("sm_scale") is not None:
            kwargs["scale"] = float(named["sm_scale"])
        batch = PagedBatch(q, kc, named["v_cache"], table.to(q.device), lens.to(q.device), qsl.to(q.device), kwargs)
        args = batch.decode_args() if self.decode else batch.prefill_args()
        shape = {"num_seqs": nseq, "block_size": ps}
        return Inputs(self.op, shape, args, dict(kwargs), batch)

    def implementation(self, definition, solve):
        fam = self

        def impl(q, k_cache, v_cache, block_table, seq_lens, query_start_loc=None, *, scale=None, return_lse=False,
                 **kw):
            from kernels.ops import Unsupported
            from kernels.testing.paged import PagedBatch

            require_plain_attention(definition, kw)
            import torch

            qsl = query_start_loc if query_start_loc is not None else torch.arange(len(seq_lens) + 1, dtype=torch.int32)
            batch = PagedBatch(q, k_cache, v_cache, block_table, seq_lens, qsl, {"scale": scale} if scale else {})
            got = solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))
            out, lse = got["output"], got.get("lse")
            if lse is not None:
                lse = lse * LN2  # base 2 -> natural log
            if return_lse:
                if lse is None:
                    raise Unsupported("return_lse: the definition has no lse output")
                return out, lse
            return out

        return impl


