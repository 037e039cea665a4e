"""flashinfer-bench's ragged GQA causal prefill <-> ``paged_prefill``.

flashinfer-bench's ``gqa_ragged_prefill_causal_h{H}_kv{KV}_d{D}`` (FlashInfer's
``BatchPrefillWithRaggedKVCacheWrapper`` with ``causal=True``; FlashInfer's ``gqa_ragged`` template) takes
``q`` ``[total_q, H, D]``, contiguous ``k``/``v`` ``[total_kv, KV, D]`` (each sequence's keys one run, no pages),
the runs as ``qo_indptr`` / ``kv_indptr`` ``[batch + 1]`` int32 and ``sm_scale``; it returns ``output``
``[total_q, H, D]`` in q's dtype and ``lse`` ``[total_q, H]`` float32 in base 2. The causal mask is bottom-right
aligned: query ``j`` of a sequence with ``q_len`` queries and ``kv_len`` keys sees keys ``t < j + 1 + kv_len -
q_len``, the contract's position ``seq_len - q_len + j``; a query that sees no key (``q_len > kv_len``, or no
key at all) gives output 0 and LSE ``-inf`` on both sides.

Mapping rules:

- theirs -> ours (``inputs_from``): the runs become a page-size-1 cache, ``k_cache = k[:, None]`` (a view),
  sequence ``i``'s block table row ``kv_indptr[i] + arange(kv_len_i)`` padded with -1, ``seq_lens`` the run
  lengths, ``query_start_loc = qo_indptr``, ``scale = sm_scale``;
- ours -> theirs (``named``, ``implementation``): each sequence's owned slots gathered from the block table into
  one run (the unowned, NaN-poisoned slots are not carried over: a ragged layout has none), ``kv_indptr`` their
  prefix sums; LSE base 2 <-> natural log (``LN2``);
- exported: the plain ``paged_prefill`` cases (no window, soft-cap, fp8 cache or sinks: the published
  definitions have none), named ``..._h{H}_kv{KV}_d{D}`` plus ``_<dtype>`` when not bfloat16; the page size of
  the case is not part of the name (the ragged layout has none).
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace import references as REF
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import require_plain_attention
from servekernels.trace.families._base import (Base2Lse, Template, contract_attention_outputs, dtype_name, is_tensor,
                                               slug)

_RAGGED = re.compile(r"^gqa_ragged_prefill_causal_h(\d+)_kv(\d+)_d(\d+)(_[a-z0-9]+)?$")
_NEED = ("q", "k", "v", "qo_indptr", "kv_indptr")

GQA_RAGGED_RUN = '''

@torch.no_grad()
def run(q, k, v, qo_indptr, kv_indptr, sm_scale):
    # float64 inside; sequence b's queries q[qo_indptr[b]:qo_indptr[b+1]] see its keys k[kv_indptr[b]:...]
    # bottom-right causally; no visible key: output 0, LSE -inf
    q64 = q.to(torch.float64)
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float64)
    for b in range(qo_indptr.shape[0] - 1):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        k0, k1 = int(kv_indptr[b]), int(kv_indptr[b + 1])
        if q1 == q0 or k1 == k0:
            continue
        positions = (k1 - k0) - (q1 - q0) + torch.arange(q1 - q0)
        out[q0:q1], lse[q0:q1] = _attend(q64[q0:q1], k[k0:k1].to(torch.float64), v[k0:k1].to(torch.float64),
                                         positions, float(sm_scale))
    return out.to(q.dtype), (lse / math.log(2.0)).to(torch.float32)  # LSE in base 2, as FlashInfer returns it
'''


def ragged_from_paged(k_cache, v_cache, block_table, seq_lens):
    """The owned slots of each sequence of a paged cache as contiguous runs: ``(k, v, kv_indptr int32)``."""
    import torch

    bs = k_cache.shape[1]
    lens = seq_lens.cpu().long()
    ks, vs = [], []
    for i, n in enumerate(lens.tolist()):
        if n:
            blocks = block_table[i, :-(-n // bs)].long()
            ks.append(k_cache[blocks].reshape(-1, *k_cache.shape[2:])[:n])
            vs.append(v_cache[blocks].reshape(-1, *v_cache.shape[2:])[:n])
    empty = k_cache.new_zeros((0, *k_cache.shape[2:]))
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(lens, 0)
    return (torch.cat(ks) if ks else empty, torch.cat(vs) if vs else v_cache.new_zeros((0, *v_cache.shape[2:])),
            indptr)


def ragged_prefill_inputs(op: str, named: dict, v) -> Inputs:
    """A ragged prefill Definition's inputs (``q``, ``k``, ``qo_indptr``, ``kv_indptr``, optional ``sm_scale``; ``v``
    given, as the caller shaped it) as ``paged_prefill``'s call over a page-size-1 cache."""
    import torch

    from kernels.testing.paged import PagedBatch

    q = named["q"]
    k_cache, v_cache, table, lens = paged_from_ragged(named["k"], v, named["kv_indptr"])
    qsl = named["qo_indptr"].cpu().to(torch.int32)
    if len(qsl) != len(lens) + 1:
        raise ValueError(f"qo_indptr: {len(qsl)} entries, kv_indptr has {len(lens) + 1}")
    kwargs = {}
    scale = named.get("sm_scale")
    if scale is not None:
        kwargs["scale"] = float(scale.item() if is_tensor(scale) else scale)
    batch = PagedBatch(q, k_cache, v_cache, table, lens, qsl.to(q.device), kwargs)
    return Inputs(op, {"num_seqs": len(lens), "block_size": 1}, batch.prefill_args(), dict(kwargs), batch)


def paged_from_ragged(k, v, kv_indptr):
    """Contiguous runs as a page-size-1 cache: ``(k_cache, v_cache, block_table, seq_lens)`` (caches are views)."""
    import torch

    indptr = kv_indptr.cpu().long()
    lens = (indptr[1:] - indptr[:-1]).to(torch.int32)
    nseq = len(lens)
    table = torch.full((nseq, max(int(lens.max()) if nseq else 0, 1)), -1, dtype=torch.int32)
    for i in range(nseq):
        table[i, :int(lens[i])] = torch.arange(int(indptr[i]), int(indptr[i + 1]), dtype=torch.int32)
    return k[:, None], v[:, None], table.to(k.device), lens.to(k.device)


class GqaRagged(Base2Lse):
    """flashinfer-bench's ragged GQA causal prefill <-> ``paged_prefill`` (rules: the module docstring)."""

    name = "gqa_ragged_prefill_causal"
    op = "paged_prefill"
    published = ("gqa_ragged_prefill_causal", "gqa_ragged")  # + the FlashInfer template prefix
    templates = (Template("attention", "gqa_ragged_prefill_trace",
                          dict(total_q=11, total_kv=29, batch_size=3, num_qo_heads=8, num_kv_heads=2, head_dim=64),
                          ("q", "k", "v", "qo_indptr", "kv_indptr", "sm_scale")),)

    def template_named(self, template, init):
        plan, run = init["plan"], init["run"]
        return {"q": run["q"], "k": run["k"], "v": run["v"], "qo_indptr": plan["qo_indptr"],
                "kv_indptr": plan["kv_indptr"], "sm_scale": run["q"].shape[-1] ** -0.5}

    def covers(self, definition):
        return bool(_RAGGED.match(definition.name))

    def why_not(self, definition):
        missing = [n for n in _NEED if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (the ragged layout this adapter maps)"
        if "output" not in definition.outputs:
            return "no output named 'output'"
        unknown = [n for n, s in definition.inputs.items()
                   if n not in set(_NEED) | {"sm_scale", "return_lse"} and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the paged-attention contract"
        k, v = definition.inputs["k"].shape, definition.inputs["v"].shape
        if k and v and k[-1] != v[-1]:
            return f"k and v head dims differ ({k[-1]}, {v[-1]}): paged_prefill takes one head_dim"
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
        h, d, kv = q.shape[1], q.shape[2], k_cache.shape[2]
        dt = dtype_name(q)
        name = f"gqa_ragged_prefill_causal_h{h}_kv{kv}_d{d}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"num_qo_heads": Axis("const", h), "num_kv_heads": Axis("const", kv), "head_dim": Axis("const", d),
                "len_indptr": Axis("var", description="sequences + 1"),
                "total_q": Axis("var", description="query tokens"),
                "total_kv": Axis("var", description="key-value tokens over all sequences")}
        ins = {"q": TensorSpec(["total_q", "num_qo_heads", "head_dim"], dt),
               "k": TensorSpec(["total_kv", "num_kv_heads", "head_dim"], dt),
               "v": TensorSpec(["total_kv", "num_kv_heads", "head_dim"], dt),
               "qo_indptr": TensorSpec(["len_indptr"], "int32", "query offsets per sequence"),
               "kv_indptr": TensorSpec(["len_indptr"], "int32", "key-value offsets per sequence"),
               "sm_scale": TensorSpec(None, "float32", "softmax scale (logit = sm_scale * q.k)")}
        outs = {"output": TensorSpec(["total_q", "num_qo_heads", "head_dim"], dt),
                "lse": TensorSpec(["total_q", "num_qo_heads"], "float32", "log-sum-exp of the logits, base 2")}
        return Definition(
            name, "gqa_ragged", axes, ins, outs, REF.GQA_PAGED.lstrip() + GQA_RAGGED_RUN,
            tags=["stage:prefill", "status:verified", "servekernels", f"servekernels:op={self.op}"],
            description=("Batched GQA causal prefill over contiguous (ragged) K/V runs, exported by servekernels "
                         f"from its {self.op} op (each sequence's owned cache slots gathered into one run); "
                         "bottom-right causal mask; LSE in base 2 (FlashInfer's); a query that sees no key gives "
                         "output 0 and LSE -inf."),
            constraints=["total_q == qo_indptr[-1].item()", "total_kv == kv_indptr[-1].item()"])

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        k, v, kv_indptr = ragged_from_paged(b.k_cache, b.v_cache, b.block_table, b.seq_lens)
        out = {"q": b.q, "k": k, "v": v, "qo_indptr": b.query_start_loc.cpu().to(torch.int32),
               "kv_indptr": kv_indptr, "sm_scale": float(b.kwargs.get("scale") or b.q.shape[-1] ** -0.5)}
        if "return_lse" in definition.inputs:
            out["return_lse"] = 1
        return out

    def inputs_from(self, definition, named):
        return ragged_prefill_inputs(self.op, named, named["v"])

    def implementation(self, definition, solve):
        fam = self

        def impl(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, return_lse=False,
                 **kw):
            from kernels.testing.paged import PagedBatch

            require_plain_attention(definition, kw)
            batch = PagedBatch(q, k_cache, v_cache, block_table, seq_lens, query_start_loc,
                               {"scale": scale} if scale else {})
            got = solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))
            return contract_attention_outputs(got, return_lse)

        return impl
