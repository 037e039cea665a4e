"""flashinfer-bench's paged MLA causal prefill <-> ``mla_decode`` with ``query_start_loc``.

flashinfer-bench's ``mla_paged_prefill_causal_h{H}_ckv{R}_kpe{P}_ps{S}`` (FlashInfer's
``BatchMLAPagedAttentionWrapper`` with ``causal=True``, DeepSeek-V3 at TP8; FlashInfer's ``mla_paged_prefill``
template) takes ``q_nope`` ``[total_q, H, R]``, ``q_pe`` ``[total_q, H, P]``, ``ckv_cache`` ``[num_pages, S, R]``,
``kpe_cache`` ``[num_pages, S, P]``, ``qo_indptr``, the pages of each sequence as CSR ``kv_indptr`` /
``kv_indices`` and ``sm_scale``; no ``kv_last_page_len`` (the published definitions and the template: a
sequence's length is its page count times S). It returns ``output`` ``[total_q, H, R]`` in q's dtype and ``lse``
float32 in base 2. K = [ckv, kpe], V = ckv, one latent head shared by all H; the causal mask is bottom-right
aligned (query ``j`` of ``q_len`` over ``kv_len`` keys sees keys ``t <= kv_len - q_len + j``), exactly the
contract's ``mla_decode`` with ``query_start_loc``.

Mapping rules:

- theirs -> ours (``inputs_from``): CSR pages -> block table and lengths (``block_table_from_csr``: whole pages
  without ``kv_last_page_len``), ``qo_indptr`` -> ``query_start_loc``, ``sm_scale`` -> ``scale`` (required: the
  contract's scale comes from the un-absorbed head). The contract takes at most 8 queries per sequence (its
  multi-token-prediction bound), a prefill chunk has dozens: a sequence of ``q_len > 8`` queries is cut into
  pieces of 8 that share its block-table row, piece ``k`` holding queries ``8k..`` with ``seq_len = kv_len -
  q_len + min(8k + 8, q_len)``, so every query keeps its position and sees the same keys (exact). A sequence
  with more queries than keys (queries that see nothing) is outside the contract: a ``ValueError``;
- ours -> theirs (``named``, ``implementation``): the pieces of one sequence (consecutive rows with the same
  block-table row whose positions continue) are merged back before the Solution sees them, so it gets the
  published layout (whole pages stay whole); block table -> CSR (``csr_from_block_table``; with
  ``kv_last_page_len`` when the Definition has it); LSE base 2 <-> natural log;
- exported: the ``mla_decode`` cases with ``query_start_loc`` (several queries per sequence), cache in q's dtype,
  ``kv_scale`` 1; at page size > 1 the export adds ``kv_last_page_len`` (our lengths are not whole pages), as
  ``mla_paged_decode`` does.
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import Base2Lse, contract_attention_outputs
from servekernels.trace.families._base import (Template, block_table_from_csr, csr_from_block_table, dtype_name,
                                               is_tensor, slug)

_MLA_PREFILL = re.compile(r"^mla_paged_prefill_causal_h(\d+)_ckv(\d+)_kpe(\d+)_ps(\d+)(_[a-z0-9]+)?$")
_NEED = ("q_nope", "q_pe", "ckv_cache", "kpe_cache", "qo_indptr", "kv_indptr", "kv_indices", "sm_scale")
MAX_QUERIES = 8  # mla_decode's bound on queries per sequence (docs/contract.md)

MLA_PAGED_PREFILL = '''import math
import torch


@torch.no_grad()
def run({params}):
    # float64 inside; a sequence's keys are its pages' slots in order, the last page holding kv_last_page_len
    # (all of it without); K = [ckv, kpe], V = ckv; query j of q_len sees keys t <= kv_len - q_len + j; a query
    # that sees no key gives output 0 and LSE -inf
    page_size = ckv_cache.shape[1]
    out = torch.zeros(q_nope.shape, dtype=torch.float64)
    lse = torch.full(q_nope.shape[:2], float("-inf"), dtype=torch.float64)
    for b in range(qo_indptr.shape[0] - 1):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        p0, p1 = int(kv_indptr[b]), int(kv_indptr[b + 1])
        if p1 == p0 or q1 == q0:
            continue
        last_len = {last}
        last = page_size if last_len is None else int(last_len[b])
        n = (p1 - p0 - 1) * page_size + last
        pages = kv_indices[p0:p1].long()
        c = ckv_cache[pages].reshape(-1, ckv_cache.shape[-1])[:n].to(torch.float64)
        kp = kpe_cache[pages].reshape(-1, kpe_cache.shape[-1])[:n].to(torch.float64)
        s = (torch.einsum("qhr,tr->qht", q_nope[q0:q1].to(torch.float64), c)
             + torch.einsum("qhp,tp->qht", q_pe[q0:q1].to(torch.float64), kp)) * float(sm_scale)
        visible = torch.arange(n)[None, :] <= (n - (q1 - q0) + torch.arange(q1 - q0))[:, None]
        s = torch.where(visible[:, None, :], s, float("-inf"))
        seen = visible.any(dim=-1)[:, None]
        m = torch.where(seen, s.max(dim=-1).values, 0.0)
        p = torch.where(visible[:, None, :], torch.exp(s - m[..., None]), 0.0)
        total = p.sum(dim=-1)
        out[q0:q1] = torch.where(seen[..., None], torch.einsum("qht,tr->qhr", p, c)
                                 / torch.where(seen, total, 1.0)[..., None], 0.0)
        lse[q0:q1] = torch.where(seen, m + torch.log(torch.where(seen, total, 1.0)), float("-inf"))
    return out.to(q_nope.dtype), (lse / math.log(2.0)).to(torch.float32)  # LSE in base 2, as FlashInfer's
'''


def split_queries(table, lens, qsl, limit: int = MAX_QUERIES):
    """Sequences of more than ``limit`` queries cut into pieces of ``limit`` that share the block-table row, each
    query at its own position: ``(table, seq_lens, query_start_loc)``, int32 on the host."""
    import torch

    rows, out_lens, out_qsl = [], [], [0]
    for i in range(len(lens)):
        n, q0, q1 = int(lens[i]), int(qsl[i]), int(qsl[i + 1])
        q_len = q1 - q0
        if q_len > n:
            raise ValueError(f"qo_indptr: sequence {i} has {q_len} queries over {n} keys; mla_decode places every "
                             "query at or after the first key (docs/contract.md)")
        ends = list(range(min(limit, q_len), q_len, limit)) + [q_len] if q_len else [0]
        for end in ends:
            rows.append(table[i])
            out_lens.append(n - q_len + end)
            out_qsl.append(q0 + end)
    return (torch.stack(rows).to(torch.int32) if rows else table[:0], torch.tensor(out_lens, dtype=torch.int32),
            torch.tensor(out_qsl, dtype=torch.int32))


def merge_pieces(table, lens, qsl):
    """``split_queries`` undone: consecutive rows with the same block-table row whose query positions continue
    (each piece starts where the last one's positions ended) become one sequence; any other row stays as it is.
    Merging such rows is exact whatever made them: the merged sequence's queries see the same keys."""
    import torch

    table_h, lens_h, qsl_h = table.cpu(), lens.cpu().long(), qsl.cpu().long()
    keep_rows, keep_lens, keep_qsl = [], [], [0]
    for i in range(len(lens_h)):
        q_len = int(qsl_h[i + 1] - qsl_h[i])
        if (keep_rows and q_len and int(keep_qsl[-1] - keep_qsl[-2]) and torch.equal(table_h[i], keep_rows[-1])
                and int(lens_h[i]) - q_len == keep_lens[-1]):
            keep_lens[-1] = int(lens_h[i])
            keep_qsl[-1] = int(qsl_h[i + 1])
            continue
        keep_rows.append(table_h[i])
        keep_lens.append(int(lens_h[i]))
        keep_qsl.append(int(qsl_h[i + 1]))
    dev = table.device
    return (torch.stack(keep_rows).to(dev) if keep_rows else table[:0], torch.tensor(keep_lens, dtype=torch.int32,
                                                                                   device=dev),
            torch.tensor(keep_qsl, dtype=torch.int32, device=dev))


class MlaPagedPrefill(Base2Lse):
    """flashinfer-bench's paged MLA causal prefill <-> ``mla_decode`` (rules: the module docstring)."""

    name = "mla_paged_prefill_causal"
    op = "mla_decode"
    published = ("mla_paged_prefill_causal", "mla_paged_prefill")  # + the FlashInfer template prefix
    # the template's init: 9, 9 and 8 queries over 12 keys each, so the first two sequences are cut (8 + 1)
    templates = (Template("attention", "mla_paged_prefill_trace",
                          dict(total_q=26, batch_size=3, num_qo_heads=4, head_dim_ckv=64, head_dim_kpe=16,
                               page_size=4, num_pages_per_seq=3),
                          ("q_nope", "q_pe", "ckv_cache", "kpe_cache", "qo_indptr", "kv_indptr", "kv_indices",
                           "sm_scale")),)

    def template_named(self, template, init):
        plan, run = init["plan"], init["run"]
        return {**{k: run[k] for k in ("q_nope", "q_pe", "ckv_cache", "kpe_cache")},
                **{k: plan[k] for k in ("qo_indptr", "kv_indptr", "kv_indices", "sm_scale")}}

    def covers(self, definition):
        return bool(_MLA_PREFILL.match(definition.name))

    def fit_draw(self, drawn, base):
        """Several queries per sequence (the draw is a decode batch): ``1 + n % 8`` for ``n`` keys, at most
        ``n``."""
        if isinstance(drawn.get("q_len"), (list, tuple)):
            return drawn
        return {**drawn, "q_len": [min(n, 1 + n % MAX_QUERIES) for n in drawn["seq_len"]]}

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
        return (kw.get("query_start_loc") is not None and kv_c.dtype == q_nope.dtype
                and float(kw.get("kv_scale", 1.0)) == 1.0)

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        q_nope, q_pe, kv_c = inputs.args[0], inputs.args[1], inputs.args[2]
        h, r, p, ps = q_nope.shape[1], q_nope.shape[2], q_pe.shape[2], kv_c.shape[1]
        dt = dtype_name(q_nope)
        name = f"mla_paged_prefill_causal_h{h}_ckv{r}_kpe{p}_ps{ps}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"num_qo_heads": Axis("const", h), "head_dim_ckv": Axis("const", r), "head_dim_kpe": Axis("const", p),
                "page_size": Axis("const", ps), "total_q": Axis("var", description="query tokens"),
                "num_pages": Axis("var"), "len_indptr": Axis("var", description="sequences + 1"),
                "num_kv_indices": Axis("var")}
        ins = {"q_nope": TensorSpec(["total_q", "num_qo_heads", "head_dim_ckv"], dt),
               "q_pe": TensorSpec(["total_q", "num_qo_heads", "head_dim_kpe"], dt),
               "ckv_cache": TensorSpec(["num_pages", "page_size", "head_dim_ckv"], dt),
               "kpe_cache": TensorSpec(["num_pages", "page_size", "head_dim_kpe"], dt),
               "qo_indptr": TensorSpec(["len_indptr"], "int32", "query offsets per sequence"),
               "kv_indptr": TensorSpec(["len_indptr"], "int32", "page offsets per sequence into kv_indices"),
               "kv_indices": TensorSpec(["num_kv_indices"], "int32", "page ids")}
        if ps > 1:
            axes["batch_size"] = Axis("var", description="sequences")
            ins["kv_last_page_len"] = TensorSpec(
                ["batch_size"], "int32", "valid tokens in each sequence's last page (1..page_size; 0 when empty)")
        ins["sm_scale"] = TensorSpec(None, "float32", "softmax scale (logit = sm_scale * (q_nope.ckv + q_pe.kpe))")
        outs = {"output": TensorSpec(["total_q", "num_qo_heads", "head_dim_ckv"], dt),
                "lse": TensorSpec(["total_q", "num_qo_heads"], "float32", "log-sum-exp of the logits, base 2")}
        last = "kv_last_page_len" if "kv_last_page_len" in ins else "None"
        ref = MLA_PAGED_PREFILL.replace("{params}", ", ".join(ins)).replace("{last}", last)
        return Definition(
            name, "mla_paged", axes, ins, outs, ref,
            tags=["stage:prefill", "status:verified", "servekernels", f"servekernels:op={self.op}"],
            description=("Batched Multi-head Latent Attention causal prefill over a paged latent cache (page lists "
                         "as CSR kv_indptr/kv_indices), exported by servekernels from its mla_decode op with "
                         "query_start_loc; bottom-right causal; LSE in base 2 (FlashInfer's); an empty sequence "
                         "gives output 0 and LSE -inf."),
            constraints=["total_q == qo_indptr[-1].item()", "num_kv_indices == kv_indptr[-1].item()"])

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        ps = b.kv_c_cache.shape[1]
        table, lens, qsl = merge_pieces(b.block_table, b.seq_lens, torch.as_tensor(b.qsl(), dtype=torch.int32))
        out = {"q_nope": b.q_nope, "q_pe": b.q_pe, "ckv_cache": b.kv_c_cache, "kpe_cache": b.k_pe_cache,
               "qo_indptr": qsl.cpu()}
        out.update(csr_from_block_table(table, lens, ps, "kv_last_page_len" in definition.inputs))
        host = lens.cpu().long()
        if "kv_last_page_len" not in definition.inputs and ps > 1 and bool((host % ps != 0).any()):
            raise ValueError(f"{definition.name}: no kv_last_page_len, so lengths are whole pages of {ps}; "
                             f"seq_lens {host.tolist()} are not")
        out["sm_scale"] = float(b.kwargs["scale"])
        return out

    def inputs_from(self, definition, named):
        from kernels.testing.mla import MlaBatch

        qn, kc = named["q_nope"], named["ckv_cache"]
        ps = kc.shape[1]
        table, lens = block_table_from_csr(named, ps)
        qsl = named["qo_indptr"].cpu()
        if len(qsl) != len(lens) + 1:
            raise ValueError(f"qo_indptr: {len(qsl)} entries, kv_indptr has {len(lens) + 1}")
        scale = named.get("sm_scale")
        if scale is None:
            raise ValueError(f"sm_scale: {definition.name}'s workload has none, and mla_decode's scale comes from "
                             "the un-absorbed head, which the latent shapes cannot tell")
        scale = float(scale.item() if is_tensor(scale) else scale)
        table, lens, qsl = split_queries(table, lens, qsl)
        dev = qn.device
        b = MlaBatch(qn, named["q_pe"], kc, named["kpe_cache"], table.to(dev), lens.to(dev), qsl.to(dev),
                     {"scale": scale})
        shape = {"num_seqs": len(lens), "q_len": (qsl[1:] - qsl[:-1]).tolist(), "seq_len": lens.tolist(),
                 "block_size": ps, "dtype": dtype_name(qn), "kv_dtype": dtype_name(kc),
                 "num_heads": int(qn.shape[1]), "rank": int(qn.shape[2]), "rope": int(named["q_pe"].shape[2]),
                 "scale": scale}
        return Inputs(self.op, shape, b.args(), b.call_kwargs(), b)

    def implementation(self, definition, solve):
        fam = self

        def impl(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, *, scale, kv_scale=1.0,
                 query_start_loc=None, return_lse=False, **kw):
            import torch

            from kernels.ops import Unsupported
            from kernels.testing.mla import MlaBatch

            if kv_c_cache.dtype != q_nope.dtype or float(kv_scale) != 1.0:
                raise Unsupported(f"fp8_kv: {definition.name}'s caches are in q's dtype, no kv_scale")
            qsl = (query_start_loc if query_start_loc is not None
                   else torch.arange(len(seq_lens) + 1, dtype=torch.int32, device=seq_lens.device))
            batch = MlaBatch(q_nope, q_pe, kv_c_cache, k_pe_cache, block_table, seq_lens, qsl, {"scale": scale})
            got = solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))
            return contract_attention_outputs(got, return_lse)

        return impl
