"""flashinfer-bench's ``mla_paged_decode`` <-> ``mla_decode``."""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import Base2Lse, contract_attention_outputs
from servekernels.trace.families._base import (Template, block_table_from_csr, csr_from_block_table, dtype_name,
                                               is_tensor, slug)

# flashinfer-bench's ``mla_paged_decode_h{H}_ckv{R}_kpe{P}_ps{S}`` <-> the registry's ``mla_decode``.
#
# flashinfer-bench's MLA decode (FlashInfer's ``BatchMLAPagedAttentionWrapper``, DeepSeek-V3 at TP8: H 16, R 512,
# P 64) takes ``q_nope`` / ``q_pe`` (one query per sequence), separate ``ckv_cache`` ``[num_pages, page_size, R]``
# and ``kpe_cache`` ``[num_pages, page_size, P]``, the pages of each sequence as CSR ``kv_indptr`` /
# ``kv_indices``, ``sm_scale``, and at ``page_size > 1`` ``kv_last_page_len`` (at page size 1 a sequence's length
# is its page count); it returns ``output`` and ``lse`` in base 2. The contract's ``mla_decode`` takes a block
# table (entries past a sequence's last page -1) and token lengths, ``scale``, and returns the LSE in natural log.
# FlashInfer's own ``mla_paged_decode`` template has no ``kv_last_page_len`` at any page size: lengths are whole
# pages, as here whenever a Definition lacks it. Only the plain case maps: one query per sequence (no
# ``query_start_loc``), a cache in q's dtype, ``kv_scale`` 1.

_MLA = re.compile(r"^mla_paged_decode_h(\d+)_ckv(\d+)_kpe(\d+)_ps(\d+)(_[a-z0-9]+)?$")
_NEED = ("q_nope", "q_pe", "ckv_cache", "kpe_cache", "kv_indptr", "kv_indices", "sm_scale")

MLA_PAGED_DECODE = '''import math
import torch


@torch.no_grad()
def run({params}):
    # float64 inside; a sequence's keys are its pages' slots in order, the last page holding kv_last_page_len
    # (all of it at page size 1); K = [ckv, kpe], V = ckv; an empty sequence gives output 0 and LSE -inf
    page_size = ckv_cache.shape[1]
    batch = q_nope.shape[0]
    out = torch.zeros(q_nope.shape, dtype=torch.float64)
    lse = torch.full(q_nope.shape[:2], float("-inf"), dtype=torch.float64)
    for b in range(batch):
        p0, p1 = int(kv_indptr[b]), int(kv_indptr[b + 1])
        if p1 == p0:
            continue
        last_len = {last}
        last = page_size if last_len is None else int(last_len[b])
        n = (p1 - p0 - 1) * page_size + last
        pages = kv_indices[p0:p1].long()
        c = ckv_cache[pages].reshape(-1, ckv_cache.shape[-1])[:n].to(torch.float64)
        kp = kpe_cache[pages].reshape(-1, kpe_cache.shape[-1])[:n].to(torch.float64)
        s = (q_nope[b].to(torch.float64) @ c.T + q_pe[b].to(torch.float64) @ kp.T) * float(sm_scale)
        lse[b] = torch.logsumexp(s, dim=-1)
        out[b] = torch.softmax(s, dim=-1) @ c
    return out.to(q_nope.dtype), (lse / math.log(2.0)).to(torch.float32)  # LSE in base 2, as FlashInfer's
'''


class MlaPagedDecode(Base2Lse):
    """flashinfer-bench's paged MLA decode <-> ``mla_decode``."""

    name = "mla_paged_decode"
    published = ("mla_paged_decode",)
    op = "mla_decode"
    templates = (Template("attention", "mla_paged_decode_trace",
                          dict(batch_size=3, num_qo_heads=4, head_dim_ckv=64, head_dim_kpe=16, page_size=4,
                               num_pages_per_seq=3),
                          ("q_nope", "q_pe", "ckv_cache", "kpe_cache", "kv_indptr", "kv_indices", "sm_scale")),)

    def template_named(self, template, init):
        plan, run = init["plan"], init["run"]
        return {**{k: run[k] for k in ("q_nope", "q_pe", "ckv_cache", "kpe_cache")},
                **{k: plan[k] for k in ("kv_indptr", "kv_indices", "sm_scale")}}

    def covers(self, definition):
        return bool(_MLA.match(definition.name))

    def why_not(self, definition):
        missing = [n for n in _NEED if n not in definition.inputs]
        if missing:
            return (f"inputs {missing} missing (the page-list layout this adapter maps; sm_scale: mla_decode's "
                    "scale comes from the un-absorbed head, which the latent shapes cannot tell)")
        if "output" not in definition.outputs:
            return "no output named 'output'"
        unknown = [n for n, s in definition.inputs.items()
                   if n not in set(_NEED) | {"kv_last_page_len"} and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the mla_decode contract"
        return ""

    def _plain(self, inputs: Inputs) -> bool:
        q_nope, kv_c = inputs.args[0], inputs.args[2]
        kw = inputs.kwargs
        return (kw.get("query_start_loc") is None and kv_c.dtype == q_nope.dtype
                and float(kw.get("kv_scale", 1.0)) == 1.0)

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        q_nope, q_pe, kv_c = inputs.args[0], inputs.args[1], inputs.args[2]
        h, r, p, ps = q_nope.shape[1], q_nope.shape[2], q_pe.shape[2], kv_c.shape[1]
        name = f"mla_paged_decode_h{h}_ckv{r}_kpe{p}_ps{ps}"
        dt = dtype_name(q_nope)
        if dt != "bfloat16":
            name += f"_{slug(dt)}"  # flashinfer-bench's names are bfloat16; another dtype is another definition
        axes = {"batch_size": Axis("var", description="sequences (one query each)"),
                "num_qo_heads": Axis("const", h), "head_dim_ckv": Axis("const", r),
                "head_dim_kpe": Axis("const", p), "page_size": Axis("const", ps), "num_pages": Axis("var"),
                "len_indptr": Axis("var"), "num_kv_indices": Axis("var")}
        ins = {"q_nope": TensorSpec(["batch_size", "num_qo_heads", "head_dim_ckv"], dt),
               "q_pe": TensorSpec(["batch_size", "num_qo_heads", "head_dim_kpe"], dt),
               "ckv_cache": TensorSpec(["num_pages", "page_size", "head_dim_ckv"], dt),
               "kpe_cache": TensorSpec(["num_pages", "page_size", "head_dim_kpe"], dt),
               "kv_indptr": TensorSpec(["len_indptr"], "int32", "page offsets per sequence into kv_indices"),
               "kv_indices": TensorSpec(["num_kv_indices"], "int32", "page ids")}
        if ps > 1:
            ins["kv_last_page_len"] = TensorSpec(
                ["batch_size"], "int32", "valid tokens in each sequence's last page (1..page_size; 0 when empty)")
        ins["sm_scale"] = TensorSpec(None, "float32", "softmax scale (logit = sm_scale * (q_nope.ckv + q_pe.kpe))")
        outs = {"output": TensorSpec(["batch_size", "num_qo_heads", "head_dim_ckv"], dt),
                "lse": TensorSpec(["batch_size", "num_qo_heads"], "float32", "log-sum-exp of the logits, base 2")}
        last = "kv_last_page_len" if "kv_last_page_len" in ins else "None"
        ref = MLA_PAGED_DECODE.replace("{params}", ", ".join(ins)).replace("{last}", last)
        return Definition(
            name, "mla_paged", axes, ins, outs, ref,
            tags=["stage:decode", "status:verified", "servekernels", f"servekernels:op={self.op}"],
            description=("Batched Multi-head Latent Attention decode over a paged latent cache (page lists as CSR "
                         "kv_indptr/kv_indices), exported by servekernels from its mla_decode op; LSE in base 2 "
                         "(FlashInfer's); an empty sequence gives output 0 and LSE -inf."),
            constraints=["len_indptr == batch_size + 1", "num_kv_indices == kv_indptr[-1].item()"])

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        ps = b.kv_c_cache.shape[1]
        lens = b.seq_lens.cpu().long()
        out = {"q_nope": b.q_nope, "q_pe": b.q_pe, "ckv_cache": b.kv_c_cache, "kpe_cache": b.k_pe_cache}
        out.update(csr_from_block_table(b.block_table, b.seq_lens, ps, "kv_last_page_len" in definition.inputs))
        if "kv_last_page_len" not in definition.inputs and ps > 1 and bool((lens % ps != 0).any()):
            raise ValueError(f"{definition.name}: no kv_last_page_len, so lengths are whole pages of {ps}; "
                             f"seq_lens {lens.tolist()} are not")
        out["sm_scale"] = float(b.kwargs["scale"])
        return out

    def inputs_from(self, definition, named):
        import torch

        from kernels.testing.mla import MlaBatch

        qn, kc = named["q_nope"], named["ckv_cache"]
        ps = kc.shape[1]
        table, lens = block_table_from_csr(named, ps)
        nseq = len(lens)
        scale = named.get("sm_scale")
        if scale is None:  # FlashInfer's template marks it optional (set in plan()); the contract has no default
            raise ValueError(f"sm_scale: {definition.name}'s workload has none, and mla_decode's scale comes from "
                             "the un-absorbed head, which the latent shapes cannot tell")
        scale = float(scale.item() if is_tensor(scale) else scale)
        b = MlaBatch(qn, named["q_pe"], kc, named["kpe_cache"], table.to(qn.device), lens.to(qn.device), None,
                     {"scale": scale})
        shape = {"num_seqs": nseq, "q_len": 1, "seq_len": lens.tolist(), "block_size": ps,
                 "dtype": dtype_name(qn), "kv_dtype": dtype_name(kc), "num_heads": int(qn.shape[1]),
                 "rank": int(qn.shape[2]), "rope": int(named["q_pe"].shape[2]), "scale": scale}
        return Inputs(self.op, shape, b.args(), b.call_kwargs(), b)

    def implementation(self, definition, solve):
        fam = self

        def impl(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
                 query_start_loc=None, return_lse=False, **kw):
            from kernels.ops import Unsupported
            from kernels.testing.mla import MlaBatch

            if query_start_loc is not None:
                raise Unsupported(f"multi_token: {definition.name} has one query per sequence")
            if kv_c_cache.dtype != q_nope.dtype or float(kv_scale) != 1.0:
                raise Unsupported(f"fp8_kv: {definition.name}'s caches are in q's dtype, no kv_scale")
            batch = MlaBatch(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, None, {"scale": scale})
            got = solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))
            return contract_attention_outputs(got, return_lse)

        return impl


