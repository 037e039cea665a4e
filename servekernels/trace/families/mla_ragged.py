"""flashinfer-bench's ragged MLA causal prefill <-> ``paged_prefill`` with V zero-padded to K's head dim.

flashinfer-bench's ``mla_ragged_prefill_causal_h{H}_qk{QK}_vo{VO}`` (DeepSeek-V3's prefill before weight
absorption, FlashInfer's ``BatchPrefillWithRaggedKVCacheWrapper`` with ``head_dim_qk`` 192 = 128 nope + 64 rope
and ``head_dim_vo`` 128, causal) is not latent attention: it is multi-head attention (H query heads, H KV heads)
whose values are narrower than its keys. It takes ``q`` ``[total_q, H, QK]``, ``k`` ``[total_kv, H, QK]``, ``v``
``[total_kv, H, VO]`` as contiguous runs, ``qo_indptr`` / ``kv_indptr`` and ``sm_scale``; it returns ``output``
``[total_q, H, VO]`` in q's dtype and ``lse`` float32 in base 2, the mask bottom-right aligned (as
``gqa_ragged_prefill_causal``).

Mapping rules:

- theirs -> ours (``inputs_from``): as ``gqa_ragged`` (runs as a page-size-1 cache, ``qo_indptr`` ->
  ``query_start_loc``, ``sm_scale`` -> ``scale``), with ``v`` padded with zeros to ``QK`` (the contract's caches
  share one head dim, 32..256): ``softmax(s) @ [v, 0] = [softmax(s) @ v, 0]``, so the contract's output is the
  definition's followed by exact zeros and the LSE is unchanged; the registry's tolerance (each element's
  budget scales with its own ``sum p |v|``) gives the padded columns a budget of 0;
- ours -> theirs (``named``, ``implementation``, ``theirs``): the runs gathered from the block table, ``v`` cut
  to its first ``VO`` columns (the rest must be zero, else a ``ValueError``: the definition cannot carry them),
  the Solution's ``output`` padded back with zeros; LSE base 2 <-> natural log;
- exported: none. A registry case would need values narrower than keys, which the paged-attention contract
  cannot hold, so this family judges foreign workloads only (no "ours" workload, no drawn shape).
- not judged: ``VO > QK`` (zero padding cannot widen K) or ``QK`` outside the contract's 32..256 (multiple of 8).
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.families._base import require_plain_attention
from servekernels.trace.families._base import LN2, Family, is_tensor
from servekernels.trace.families.gqa_ragged import ragged_from_paged, ragged_prefill_inputs

_MLA_RAGGED = re.compile(r"^mla_ragged_prefill_causal_h(\d+)_qk(\d+)_vo(\d+)(_[a-z0-9]+)?$")
_NEED = ("q", "k", "v", "qo_indptr", "kv_indptr")


def _dims(definition) -> tuple[int, int]:
    """``(QK, VO)`` from the name (the Definition's constant axes say the same where it has them)."""
    m = _MLA_RAGGED.match(definition.name)
    return int(m.group(2)), int(m.group(3))


class MlaRagged(Family):
    """flashinfer-bench's ragged MLA causal prefill <-> ``paged_prefill`` (rules: the module docstring)."""

    name = "mla_ragged_prefill_causal"
    op = "paged_prefill"
    published = ("mla_ragged_prefill_causal",)

    def covers(self, definition):
        return bool(_MLA_RAGGED.match(definition.name))

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
        qk, vo = _dims(definition)
        if vo > qk:
            return f"vo {vo} > qk {qk}: zero-padding V to K's head dim cannot map it"
        if not (qk % 8 == 0 and 32 <= qk <= 256):
            return f"qk {qk}: paged_prefill takes a head dim that is a multiple of 8 in 32..256"
        return ""

    def _plain(self, inputs: Inputs) -> bool:
        return False  # no registry case has values narrower than keys: nothing to export

    def definition_for(self, spec, case, inputs, expected):
        return None

    def named(self, definition, inputs):
        import torch

        b = inputs.data
        _, vo = _dims(definition)
        k, v, kv_indptr = ragged_from_paged(b.k_cache, b.v_cache, b.block_table, b.seq_lens)
        if bool((v[..., vo:] != 0).any()):
            raise ValueError(f"v_cache: columns {vo}.. hold values; {definition.name}'s v has {vo} columns")
        out = {"q": b.q, "k": k, "v": v[..., :vo].contiguous(),
               "qo_indptr": b.query_start_loc.cpu().to(torch.int32), "kv_indptr": kv_indptr,
               "sm_scale": float(b.kwargs.get("scale") or b.q.shape[-1] ** -0.5)}
        if "return_lse" in definition.inputs:
            out["return_lse"] = 1
        return out

    def inputs_from(self, definition, named):
        import torch

        k, v = named["k"], named["v"]
        if v.shape[-1] > k.shape[-1]:
            raise ValueError(f"v: head dim {v.shape[-1]} wider than k's {k.shape[-1]}")
        v = torch.nn.functional.pad(v, (0, k.shape[-1] - v.shape[-1]))  # exact zeros: out gains zero columns
        return ragged_prefill_inputs(self.op, named, v)

    def implementation(self, definition, solve):
        fam = self

        def impl(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, scale=None, return_lse=False,
                 **kw):
            import torch

            from kernels.ops import Unsupported
            from kernels.testing.paged import PagedBatch

            require_plain_attention(definition, kw)
            batch = PagedBatch(q, k_cache, v_cache, block_table, seq_lens, query_start_loc,
                               {"scale": scale} if scale else {})
            got = solve(fam.named(definition, Inputs(fam.op, {}, (), {}, batch)))
            out = got["output"]
            out = torch.nn.functional.pad(out, (0, q.shape[-1] - out.shape[-1]))  # the zero columns back
            lse = got.get("lse")
            if return_lse:
                if lse is None:
                    raise Unsupported("return_lse: the definition has no lse output")
                return out, lse * LN2  # base 2 -> natural log
            return out

        return impl

    def theirs(self, definition, outputs):
        _, vo = _dims(definition)
        out = {}
        for k, v in outputs.items():
            if k == "out" and is_tensor(v):
                out["output"] = v[..., :vo]
            elif k == "lse" and is_tensor(v):
                out["lse"] = v / LN2
            else:
                out["output" if k == "out" else k] = v
        return out
