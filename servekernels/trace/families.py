"""Semantic adapters: a FlashInfer-Trace Definition family <-> an op of the registry.

A family knows, for its op, how a call looks in the Definition's terms (``named``: the inputs by name), how a
Definition's inputs become the op's ``Inputs`` (so the registry's tolerance, extra checks and diagnosis apply on
anyone's workloads), and how a Solution becomes an implementation of the contract (``implementation``). Two
kinds:

- ``GqaPaged``: flashinfer-bench's ``gqa_paged_decode_h{H}_kv{KV}_d{D}_ps{P}`` and
  ``gqa_paged_prefill_causal_...`` (FlashInfer's ``gqa_paged_decode`` / ``gqa_paged_prefill`` templates): CSR
  page lists ``kv_indptr``/``kv_indices`` (+ ``kv_last_page_len`` when pages hold more than one token) become a
  block table and token lengths, ``qo_indptr`` is ``query_start_loc``, ``sm_scale`` is ``scale``, LSE base 2 <->
  natural log. It takes the plain cases (no window, soft-cap or fp8 scale: flashinfer-bench's definitions have
  none);
- ``MlaPagedDecode``: flashinfer-bench's ``mla_paged_decode_h{H}_ckv{R}_kpe{P}_ps{S}`` <->
  ``mla_decode`` (the same CSR page lists, ``sm_scale`` required, one query per sequence, base-2 LSE);
- ``Generic``: any op of the registry, one Definition per check case, named ``sk_<op>_<case>``: inputs are the
  contract's arguments (a weight struct's tensors as ``<arg>_<field>``), scalars as scalar inputs, every other
  value (a string, a dtype, a struct's group size) a constant of the Definition (its tags), outputs the op's.

``family_for_definition`` picks the family of a Definition it reads (or says why none fits); ``export`` loops
over the registry and asks ``family_for_inputs``, so an op that lands later is exported and judged through
``Generic`` with no edit here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable

from kernels.ops import Inputs, OpSpec, registry
from servekernels.trace import references as REF
from servekernels.trace.schema import Axis, Definition, TensorSpec

CONTROL = ("return_lse", "num_splits", "split_size", "batch_invariant", "validate")  # no effect on the math
LN2 = math.log(2.0)


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")



def csr_from_block_table(block_table, seq_lens, page_size: int, last_page_len: bool) -> dict:
    """Our ``(block_table, seq_lens)`` as FlashInfer's CSR page list: ``kv_indptr``, ``kv_indices`` and, where
    the definition takes it (``last_page_len``), ``kv_last_page_len``."""
    import torch  # deferred: the trace package's schema and coverage load without torch

    lens = seq_lens.cpu().long()
    pages = (lens + page_size - 1) // page_size
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(pages, 0)
    indices = torch.cat([block_table[i, :int(n)].cpu() for i, n in enumerate(pages)] or
                        [torch.zeros(0, dtype=torch.int32)]).to(torch.int32)
    out = {"kv_indptr": indptr, "kv_indices": indices}
    if last_page_len:
        out["kv_last_page_len"] = torch.where(lens > 0, lens - (pages - 1) * page_size, 0).to(torch.int32)
    return out


def block_table_from_csr(named: dict, page_size: int):
    """FlashInfer's CSR page list (``kv_indptr``, ``kv_indices``, optional ``kv_last_page_len``) as our
    ``(block_table int32 [num_seqs, max_pages] padded with -1, seq_lens int32)``; without ``kv_last_page_len``
    every sequence is whole pages."""
    import torch  # deferred: the trace package's schema and coverage load without torch

    indptr = named["kv_indptr"].cpu().long()
    nseq = len(indptr) - 1
    pages = indptr[1:] - indptr[:-1]
    last = named.get("kv_last_page_len")
    last = torch.full((nseq,), page_size) if last is None else last.cpu().long()
    lens = torch.where(pages > 0, (pages - 1) * page_size + last, 0).to(torch.int32)
    table = torch.full((nseq, max(int(pages.max()) if nseq else 0, 1)), -1, dtype=torch.int32)
    idx = named["kv_indices"].cpu().to(torch.int32)
    for i in range(nseq):
        table[i, :int(pages[i])] = idx[int(indptr[i]):int(indptr[i + 1])]
    return table, lens

class Family:
    name = ""
    op = ""

    def covers(self, definition: Definition) -> bool:
        raise NotImplementedError

    def why_not(self, definition: Definition) -> str:
        """"" when this family judges ``definition``; else why not."""
        return ""

    def definition_for(self, spec: OpSpec, case: str, inputs: Inputs, expected: dict) -> Definition | None:
        raise NotImplementedError

    def named(self, definition: Definition, inputs: Inputs) -> dict:
        raise NotImplementedError

    def inputs_from(self, definition: Definition, named: dict) -> Inputs:
        raise NotImplementedError

    def implementation(self, definition: Definition, solve: Callable[[dict], dict]) -> Callable:
        """A contract implementation of the op that runs ``solve`` (named inputs -> named outputs, in the
        Definition's terms) and hands back the op's outputs in the contract's terms."""
        raise NotImplementedError

    def theirs(self, definition: Definition, outputs: dict) -> dict:
        """The op's outputs (contract terms) in the Definition's terms, for flashinfer-bench's rule."""
        return outputs


# --------------------------------------------------------------------------------------------- GQA paged

_GQA = re.compile(r"^gqa_paged_(decode|prefill)(_causal)?_h(\d+)_kv(\d+)_d(\d+)_ps(\d+)(_[a-z0-9]+)?$")


class GqaPaged(Family):
    """flashinfer-bench's paged GQA decode/prefill <-> ``paged_decode`` / ``paged_prefill``."""

    def __init__(self, decode: bool):
        self.decode = decode
        self.op = "paged_decode" if decode else "paged_prefill"
        self.name = "gqa_paged_decode" if decode else "gqa_paged_prefill_causal"

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
            ins["kv_last_page_len"] = TensorSpec(["batch_size"], "int32",
                                                 "valid tokens in each sequence's last page (1..page_size; 0 when empty)")
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

            if kw.get("sliding_window") or kw.get("soft_cap") or float(kw.get("k_scale", 1.0)) != 1.0 \
                    or float(kw.get("v_scale", 1.0)) != 1.0 or kw.get("sinks") is not None:
                raise Unsupported(f"features: {definition.name} has no window, soft-cap, fp8 scale or sinks")
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

    def theirs(self, definition, outputs):
        out = dict(outputs)
        if "lse" in out and is_tensor(out["lse"]):
            out["lse"] = out["lse"] / LN2
        return {"output" if k == "out" else k: v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- RMSNorm

_RMS = re.compile(r"^rmsnorm_h(\d+)(_[a-z0-9_]+)?$")
RMS_EPS = 1e-6  # flashinfer-bench's and FlashInfer's rmsnorm fix epsilon at 1e-6 (its reference's EPS)

_RMS_REF = '''import torch


@torch.no_grad()
def run(hidden_states, weight):
    # y = x / sqrt(mean(x^2) + 1e-6) * weight, float64 inside, stored in hidden_states' dtype
    x = hidden_states.to(torch.float64)
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * weight.to(torch.float64)
    return y.to(hidden_states.dtype)
'''


class Rmsnorm(Family):
    """flashinfer-bench's ``rmsnorm_h{H}`` (eps fixed at 1e-6, no weight offset) <-> ``rms_norm``."""

    name = "rmsnorm"
    op = "rms_norm"

    def covers(self, definition):
        return bool(_RMS.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) - {"hidden_states", "weight"} or "hidden_states" not in definition.inputs:
            return f"inputs {sorted(definition.inputs)}: this adapter maps (hidden_states, weight)"
        return ""

    def _plain(self, inputs):
        kw = inputs.kwargs
        return float(kw.get("eps", 0)) == RMS_EPS and not kw.get("weight_offset") and inputs.args[0].dim() == 2

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        x, w = inputs.args[0], inputs.args[1]
        name = f"rmsnorm_h{x.shape[1]}"
        if (dtype_name(x), dtype_name(w)) != ("bfloat16", "bfloat16"):
            name += f"_{slug(dtype_name(x))}" + (f"_w{slug(dtype_name(w))}" if w.dtype != x.dtype else "")
        return Definition(
            name, "rmsnorm", {"batch_size": Axis("var"), "hidden_size": Axis("const", int(x.shape[1]))},
            {"hidden_states": TensorSpec(["batch_size", "hidden_size"], dtype_name(x)),
             "weight": TensorSpec(["hidden_size"], dtype_name(w))},
            {"output": TensorSpec(["batch_size", "hidden_size"], dtype_name(x))}, _RMS_REF,
            tags=["status:verified", "servekernels", f"servekernels:op={self.op}"],
            description="Root Mean Square Normalization, epsilon fixed at 1e-6 (flashinfer-bench's rmsnorm), "
                        "exported by servekernels from its rms_norm op.")

    def named(self, definition, inputs):
        return {"hidden_states": inputs.args[0], "weight": inputs.args[1]}

    def inputs_from(self, definition, named):
        x = named["hidden_states"]
        shape = {"num_tokens": int(x.shape[0]), "hidden": int(x.shape[1]), "dtype": dtype_name(x), "eps": RMS_EPS}
        return Inputs(self.op, shape, (x, named["weight"]), {"eps": RMS_EPS})

    def implementation(self, definition, solve):
        def impl(x, weight, *, eps, weight_offset=0.0):
            from kernels.ops import Unsupported

            if float(eps) != RMS_EPS or weight_offset:
                raise Unsupported(f"eps: {definition.name} fixes eps at 1e-6 and has no weight offset")
            return solve({"hidden_states": x, "weight": weight})["output"]

        return impl

    def theirs(self, definition, outputs):
        return {"output": outputs["out"]}


# ------------------------------------------------------------------------------------------ merge states

_MERGE = re.compile(r"^merge_states_h(\d+)_d(\d+)(_[a-z0-9_]+)?$")

_MERGE_REF = '''import math
import torch


@torch.no_grad()
def run(v, s):
    # v [seq_len, num_states, num_heads, head_dim], s [seq_len, num_states, num_heads] base-2 LSEs;
    # merged = sum_i 2^(s_i - s) v_i with s = log2 sum_i 2^s_i; a state with s = -inf adds nothing
    s64 = s.to(torch.float64) * math.log(2.0)
    poisoned = (torch.isnan(s64) | (s64 == float("inf"))).any(dim=1)
    s64 = torch.where(torch.isnan(s64) | (s64 == float("inf")), float("-inf"), s64)
    m = s64.max(dim=1).values
    m = torch.where(torch.isfinite(m), m, 0.0)
    w = torch.exp(s64 - m[:, None])
    total = w.sum(dim=1)
    safe = torch.where((w > 0)[..., None], v.to(torch.float64), 0.0)
    out = torch.where(total[..., None] > 0, (w[..., None] * safe).sum(dim=1) / torch.where(total > 0, total, 1.0)[..., None], 0.0)
    lse = torch.where(total > 0, m + torch.log(torch.where(total > 0, total, 1.0)), float("-inf"))
    out = torch.where(poisoned[..., None], float("nan"), out)
    lse = torch.where(poisoned, float("nan"), lse)
    return out.to(v.dtype), (lse / math.log(2.0)).to(torch.float32)
'''


class MergeStates(Family):
    """FlashInfer's ``merge_states`` template (states on dim 1, base-2 LSE) <-> ``merge_states``."""

    name = "merge_states"
    op = "merge_states"

    def covers(self, definition):
        return bool(_MERGE.match(definition.name))

    def why_not(self, definition):
        if set(definition.inputs) != {"v", "s"} or set(definition.outputs) != {"v_merged", "s_merged"}:
            return "this adapter maps inputs (v, s) and outputs (v_merged, s_merged)"
        return ""

    def _plain(self, inputs):
        return True

    def definition_for(self, spec, case, inputs, expected):
        outs = inputs.args[0]
        h, d = int(outs.shape[2]), int(outs.shape[3])
        dt = dtype_name(outs)
        name = f"merge_states_h{h}_d{d}" + ("" if dt == "bfloat16" else f"_{slug(dt)}")
        axes = {"seq_len": Axis("var"), "num_states": Axis("var"), "num_heads": Axis("const", h),
                "head_dim": Axis("const", d)}
        return Definition(
            name, "cascade_merge", axes,
            {"v": TensorSpec(["seq_len", "num_states", "num_heads", "head_dim"], dt),
             "s": TensorSpec(["seq_len", "num_states", "num_heads"], "float32", "base-2 LSE of each state")},
            {"v_merged": TensorSpec(["seq_len", "num_heads", "head_dim"], dt),
             "s_merged": TensorSpec(["seq_len", "num_heads"], "float32", "base-2 LSE")}, _MERGE_REF,
            tags=["servekernels", f"servekernels:op={self.op}"],
            description="Merge attention states over disjoint key sets (FlashInfer's merge_states), exported by "
                        "servekernels from its merge_states op; a state with LSE -inf contributes nothing.")

    def named(self, definition, inputs):
        outs, lses = inputs.args
        return {"v": outs.transpose(0, 1).contiguous(), "s": (lses / LN2).transpose(0, 1).contiguous()}

    def inputs_from(self, definition, named):
        v, s = named["v"], named["s"]
        shape = {"num_states": int(v.shape[1]), "num_tokens": int(v.shape[0]), "num_heads": int(v.shape[2]),
                 "head_dim": int(v.shape[3]), "dtype": dtype_name(v)}
        return Inputs(self.op, shape, (v.transpose(0, 1).contiguous(), (s * LN2).transpose(0, 1).contiguous()), {})

    def implementation(self, definition, solve):
        def impl(outs, lses):
            got = solve({"v": outs.transpose(0, 1).contiguous(), "s": (lses / LN2).transpose(0, 1).contiguous()})
            return got["v_merged"], got["s_merged"] * LN2

        return impl

    def theirs(self, definition, outputs):
        return {"v_merged": outputs["out"], "s_merged": outputs["lse"] / LN2}


# ------------------------------------------------------------------------------------------------ MLA decode

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


class MlaPagedDecode(Family):
    """flashinfer-bench's paged MLA decode <-> ``mla_decode``."""

    name = "mla_paged_decode"
    op = "mla_decode"

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
            out, lse = got["output"], got.get("lse")
            if return_lse:
                if lse is None:
                    raise Unsupported("return_lse: the definition has no lse output")
                return out, lse * LN2  # base 2 -> natural log
            return out

        return impl

    def theirs(self, definition, outputs):
        out = dict(outputs)
        if "lse" in out and is_tensor(out["lse"]):
            out["lse"] = out["lse"] / LN2
        return {"output" if k == "out" else k: v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------- generic

def _is_struct(x) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type) or (isinstance(x, tuple) and hasattr(x, "_fields"))


def _fields(x) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(x):
        return [(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)]
    return list(zip(x._fields, x))


def _const(v) -> Any:
    """A JSON value for a constant, or raise TypeError."""
    import torch

    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    if isinstance(v, (tuple, list)):
        return [_const(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise TypeError(type(v).__name__)


def flatten(spec: OpSpec, args: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """A contract call as ``(tensors and scalars by input name, constants by dotted name, structs)``: tensors and
    numbers become inputs (a struct's tensor fields as ``<arg>_<field>``), the rest constants; control keywords
    and None are left out. ``structs``: ``{arg: (type, [field names])}`` to rebuild the call."""
    sig = spec.contract_signature()
    bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
    named, consts, structs = {}, {}, {}
    for pname, value in bound.arguments.items():
        if pname in CONTROL or value is None:
            continue
        if is_tensor(value):
            named[pname] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_struct(value):
            consts[pname] = _const(value)
        elif isinstance(value, (int, float)):
            named[pname] = value
        else:
            fields = _fields(value)
            structs[pname] = (type(value), [f for f, _ in fields])
            for f, v in fields:
                if is_tensor(v):
                    named[f"{pname}_{f}"] = v
                elif v is not None:
                    consts[f"{pname}.{f}"] = _const(v)
    import torch

    for n, v in list(named.items()):  # flashinfer-bench has no unsigned dtype: uint8 travels as its int8 bits
        if is_tensor(v) and v.dtype == torch.uint8:
            named[n] = v.view(torch.int8)
            consts[f"{n}.view"] = "uint8"
    return named, consts, structs


def unflatten(spec: OpSpec, named: dict, consts: dict, structs: dict) -> tuple[tuple, dict]:
    """The contract call back from ``flatten``'s parts."""
    import torch

    sig = spec.contract_signature()
    named = {n: (v.view(getattr(torch, consts[f"{n}.view"])) if f"{n}.view" in consts else v)
             for n, v in named.items()}
    args, kwargs = [], {}
    for pname, p in sig.parameters.items():
        if pname in structs:
            typ, fields = structs[pname]
            value = typ(**{f: named.get(f"{pname}_{f}", _unconst(consts.get(f"{pname}.{f}"), tuple_ok=True))
                           for f in fields})
        elif pname in named:
            value = named[pname]
        elif pname in consts:
            value = _unconst(consts[pname], pname)
        else:
            continue
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(args) == list(sig.parameters).index(pname):
            args.append(value)
        else:
            kwargs[pname] = value
    return tuple(args), kwargs


def _unconst(v, name: str = "", tuple_ok: bool = False):
    """A constant back: a struct field's list was a tuple (a block size); an argument's list stays a list."""
    import torch

    if isinstance(v, list) and tuple_ok:
        return tuple(v)
    if isinstance(v, str) and name.endswith("dtype") and hasattr(torch, v):
        return getattr(torch, v)
    return v


_TAG = "servekernels:"


class Generic(Family):
    """Any op of the registry, one Definition per check case, in the contract's own terms."""

    name = "sk"

    def __init__(self, op: str):
        self.op = op

    def covers(self, definition):
        return f"{_TAG}op={self.op}" in definition.tags and definition.name.startswith("sk_")

    def _consts(self, definition) -> dict:
        return {t[len(_TAG) + 6:].split("=", 1)[0]: json.loads(t.split("=", 1)[1])
                for t in definition.tags if t.startswith(f"{_TAG}const:")}

    def definition_for(self, spec, case, inputs, expected):
        named, consts, structs = flatten(spec, inputs.args, inputs.kwargs)
        out_dtypes = _out_dtypes(spec, inputs, named, expected)
        axes, ins = {}, {}
        for n, v in named.items():
            if is_tensor(v):
                dims = []
                for i, size in enumerate(v.shape):
                    ax = f"{n}_{i}"
                    axes[ax] = Axis("const", int(size))
                    dims.append(ax)
                ins[n] = TensorSpec(dims, dtype_name(v))
            else:
                ins[n] = TensorSpec(None, "float32" if isinstance(v, float) else "int32")
        outs = {}
        in_place = _in_place(spec)
        for o in spec.outputs:
            e = expected[o]
            dims = []
            for i, size in enumerate(getattr(e, "shape", ())):
                match = next((a for a, ax in axes.items() if ax.value == int(size) and a.endswith(f"_{i}")), None)
                match = match or next((a for a, ax in axes.items() if ax.value == int(size)), None)
                if match is None:
                    match = f"{o}_{i}"
                    axes[match] = Axis("const", int(size))
                dims.append(match)
            oname = f"{o}_out" if o in ins else o
            outs[oname] = TensorSpec(dims, out_dtypes[o], f"{o} after the call (written in place)" if o in in_place
                                     else None)
        body = REF.OPS.get(self.op)
        self_contained = body is not None
        body = body or REF.FALLBACK
        params = list(ins)
        call_kw = ", ".join(f"{p}={p}" for p in params)
        struct_paths = {k: f"{t.__module__}:{t.__qualname__}" for k, (t, _) in structs.items()}
        run = ("import torch\n\n_OP = %r\n_CONSTS = %s\n_STRUCTS = %s\n_OUT_DTYPES = (%s)\n%s\n\n"
               "@torch.no_grad()\ndef run(%s):\n    return _reference(%s)\n") % (
            self.op, json.dumps(consts), json.dumps(struct_paths),
            "".join(f"torch.{out_dtypes[o]}, " for o in spec.outputs), body, ", ".join(params), call_kw)
        tags = ["servekernels", f"{_TAG}op={self.op}", f"{_TAG}case={case}"]
        tags += [f"{_TAG}const:{k}={json.dumps(v)}" for k, v in consts.items()]  # .view: the bits' real dtype
        tags += [f"{_TAG}struct:{k}={t.__module__}:{t.__qualname__}" for k, (t, _) in structs.items()]
        desc = f"servekernels {self.op} ({spec.summary}), check case {case}, in the contract's own terms."
        if not self_contained:
            desc += " Its reference is not self-contained yet: judge it with `servekernels trace judge`."
        if any(o in in_place for o in spec.outputs):
            desc += " In place in the contract: here the outputs are the written tensors, returned whole."
        return Definition(f"sk_{slug(self.op)}_{slug(case)}", f"sk_{self.op}", axes, ins, outs, run,
                          tags=tags, description=desc)

    def named(self, definition, inputs):
        named, _, _ = flatten(registry()[self.op], inputs.args, inputs.kwargs)
        return named

    def _structs(self, definition) -> dict:
        import importlib

        out = {}
        for t in definition.tags:
            if t.startswith(f"{_TAG}struct:"):
                arg, path = t[len(_TAG) + 7:].split("=", 1)
                mod, _, qual = path.partition(":")
                typ = getattr(importlib.import_module(mod), qual)
                out[arg] = (typ, [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ)
                            else list(typ._fields))
        return out

    def implementation(self, definition, solve):
        spec = registry()[self.op]
        in_place = _in_place(spec)

        def impl(*args, **kwargs):
            named, _, _ = flatten(spec, args, kwargs)
            got = solve(named)
            outs = []
            for o in spec.outputs:
                oname = f"{o}_out" if f"{o}_out" in definition.outputs else o
                outs.append(got[oname])
            if in_place:
                sig = spec.contract_signature()
                bound = sig.bind_partial(*args, **kwargs)
                for o, value in zip(spec.outputs, outs):
                    if o in in_place:
                        bound.arguments[o].copy_(value)
                return None
            if kwargs.get("return_lse") is False and len(outs) > 1:
                return outs[0]
            return outs[0] if len(outs) == 1 else tuple(outs)

        return impl


def _in_place(spec: OpSpec) -> set:
    names = list(spec.contract_signature().parameters)
    return {names[i] for i in spec.writes if i < len(names)} & set(spec.outputs)


def _out_dtypes(spec: OpSpec, inputs: Inputs, named: dict, expected: dict) -> dict:
    """Each output's dtype by the contract: the spec's ``out_dtypes``, else ``out_dtype``, else the written
    argument's, else the first floating input's (never float8)."""
    got = {}
    if spec.out_dtypes is not None:
        got = {k: str(v).replace("torch.", "") for k, v in (spec.out_dtypes(inputs) or {}).items()}
    for o in spec.outputs:
        if o in got:
            continue
        if o in named and is_tensor(named[o]):
            got[o] = dtype_name(named[o])
        elif inputs.kwargs.get("out_dtype") is not None:
            got[o] = str(inputs.kwargs["out_dtype"]).replace("torch.", "")
        else:
            default = spec.contract_signature().parameters.get("out_dtype")
            if default is not None and isinstance(default.default, str):
                got[o] = default.default
            else:
                floats = [dtype_name(v) for v in named.values() if is_tensor(v) and v.is_floating_point()
                          and "float8" not in dtype_name(v)]
                got[o] = floats[0] if floats else "float32"
    return got


def families() -> list[Family]:
    """Every family: the published ones first, then one ``Generic`` per op of the registry."""
    out: list[Family] = []
    ops = registry()
    if "paged_decode" in ops:
        out.append(GqaPaged(decode=True))
    if "paged_prefill" in ops:
        out.append(GqaPaged(decode=False))
    if "rms_norm" in ops:
        out.append(Rmsnorm())
    if "merge_states" in ops:
        out.append(MergeStates())
    if "mla_decode" in ops:
        out.append(MlaPagedDecode())
    out += [Generic(op) for op in ops]
    return out


def family_for_definition(definition: Definition) -> tuple[Family | None, str]:
    """``(family, "")`` for a Definition some family judges, else ``(None, why not)``."""
    for fam in families():
        if fam.covers(definition):
            why = fam.why_not(definition)
            return (None, why) if why else (fam, "")
    return None, f"no adapter maps op_type {definition.op_type!r} ({definition.name}) to an op of this suite"


def family_for_inputs(spec: OpSpec, inputs: Inputs) -> list[Family]:
    """The families a case is exported through: a published one where it fits, and always the generic one."""
    out = [f for f in families() if not isinstance(f, Generic) and f.op == spec.name and f._plain(inputs)]
    return out + [Generic(spec.name)]


def call_reference(op: str, named: dict, consts: dict, struct_paths: dict) -> tuple:
    """This project's float64 reference of ``op`` on a Definition's named inputs, outputs cast to the contract's
    dtypes (what a generic Definition's ``run`` calls for an op with no torch body of its own)."""
    import importlib

    import torch

    spec = registry()[op]
    structs = {}
    for arg, path in struct_paths.items():
        mod, _, qual = path.partition(":")
        typ = getattr(importlib.import_module(mod), qual)
        structs[arg] = (typ, [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ)
                        else list(typ._fields))
    args, kwargs = unflatten(spec, named, consts, structs)
    inputs = Inputs(op, {}, args, kwargs)
    got = spec.call(spec.reference_fn(), inputs)
    out = []
    for o in spec.outputs:
        v = got[o]
        out.append(torch.as_tensor(v) if not is_tensor(v) else v)
    return tuple(out)


def _generic_inputs_from(self, definition, named):
    """A generic Definition's inputs as the op's call (``Inputs.data`` None: an op whose judge needs more than
    the call, attention's batch, judges our own workloads, rebuilt by the registry, instead)."""
    spec = registry()[self.op]
    args, kwargs = unflatten(spec, named, self._consts(definition), self._structs(definition))
    return Inputs(self.op, {}, args, kwargs)


Generic.inputs_from = _generic_inputs_from


def call_contract(op: str, fn, args: tuple, kwargs: dict) -> dict:
    """Any implementation of ``op`` called with the contract's arguments: ``{output: value}`` (the LSE asked
    for where the op has one; an in-place op's written arguments cloned first and returned)."""
    spec = registry()[op]
    sig = spec.contract_signature()
    names = list(sig.parameters)
    args = list(args)
    written = {}
    for i in spec.writes:
        if i < len(args):
            args[i] = args[i].clone()
            written[names[i]] = args[i]
    kw = dict(kwargs)
    if "return_lse" in sig.parameters:
        kw["return_lse"] = True
    got = fn(*args, **kw)
    if written:
        return {o: written[o] for o in spec.outputs}
    got = got if isinstance(got, tuple) else (got,)
    return dict(zip(spec.outputs, got))
