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
- ``GqaRagged``: flashinfer-bench's ``gqa_ragged_prefill_causal_h{H}_kv{KV}_d{D}`` (FlashInfer's ``gqa_ragged``)
  <-> ``paged_prefill``: contiguous K/V runs as a page-size-1 cache (rules in ``gqa_ragged.py``);
- ``MlaPagedPrefill``: flashinfer-bench's ``mla_paged_prefill_causal_h{H}_ckv{R}_kpe{P}_ps{S}`` <-> ``mla_decode``
  with ``query_start_loc`` (a chunk of more than 8 queries cut into pieces that share its pages; rules in
  ``mla_prefill.py``);
- ``MlaRagged``: flashinfer-bench's ``mla_ragged_prefill_causal_h{H}_qk{QK}_vo{VO}`` (multi-head attention with
  values narrower than keys) <-> ``paged_prefill`` with V zero-padded to K's head dim (exact; rules in
  ``mla_ragged.py``);
- ``MergeState`` / ``MergeStateInPlace``: FlashInfer's ``merge_state`` / ``merge_state_in_place`` <->
  ``merge_states`` with two states (rules in ``merge.py``); ``SingleDecode``: FlashInfer's ``single_decode`` <->
  ``paged_decode`` with one sequence (``single_prefill`` covered, not judged: why in ``single.py``; so is
  ``append_paged_kv_cache``, ``page_append.py``); ``TrtllmBatchDecode``: FlashInfer's ``trtllm_batch_decode``
  (HND ``kv_cache``, one query per request) <-> ``paged_decode``, ``trtllm_batch_context`` <-> ``paged_prefill``
  (``trtllm.py``);
- ``Rmsnorm``: flashinfer-bench's ``rmsnorm_h{H}`` (``gemma_rmsnorm_h{H}``: weight offset 1) <-> ``rms_norm``;
  ``FusedAddRmsnorm``: ``fused_add_rmsnorm_h{H}`` <-> ``fused_add_rms_norm`` (eps from each Definition);
- ``RopeCosSinCache``: flashinfer-bench's ``rope_with_cos_sin_cache_{neox,gptj}_style_d{D}_rd{R}`` and FlashInfer's
  ``rope_cos_sin_cache[_inplace]`` (flattened q/k) <-> ``rotary_embedding`` (in place; rules in ``rope.py``);
- ``SamplingFromProbs`` / ``SamplingFromLogits``: flashinfer-bench's
  ``{top_k,top_p,top_k_top_p}_sampling_from_probs_v{V}`` and FlashInfer's sampling templates <->
  ``top_k_top_p_sample`` (probs -> log-probs at temperature 1), judged by the statistical oracle (the Solution
  owns its RNG: ``Family.draws``); ``ChainSpeculativeSampling``: FlashInfer's ``chain_speculative_sampling``
  <-> ``rejection_sample`` (the exact law of the first rejection and its token; rules in ``chain.py``);
- ``Gemm``: flashinfer-bench's ``gemm_n{N}_k{K}`` and FlashInfer's ``tinygemm_bf16`` / ``mm_M1_16_K7168_N256``
  <-> ``grouped_gemm``, one Solution call per group of rows (rules in ``gemm.py``); ``Fp8GroupwiseGemm``:
  FlashInfer's ``gemm_fp8_nt_groupwise`` / ``fp8_blockscale_gemm_sm90`` <-> ``grouped_gemm_fp8``;
- ``Generic``: any op of the registry, one Definition per check case, named ``sk_<op>_<case>``: inputs are the
  contract's arguments (a weight struct's tensors as ``<arg>_<field>``), scalars as scalar inputs, every other
  value (a string, a dtype, a struct's group size) a constant of the Definition (its tags), outputs the op's.

``family_for_definition`` picks the family of a Definition it reads (or says why none fits); ``export`` loops
over the registry and asks ``family_for_inputs``, so an op that lands later is exported and judged through
``Generic`` with no edit here (a published family's adapter is one module here and one line of ``ADAPTERS``).
"""
from __future__ import annotations

from kernels.ops import Inputs, OpSpec, registry
from servekernels.trace.families._base import (CONTROL, LN2, Family, Template, block_table_from_csr,
                                               csr_from_block_table, dtype_name, is_tensor, slug)
from servekernels.trace.families.generic import Generic, call_contract, call_reference, flatten, unflatten
from servekernels.trace.families.chain import ChainSpeculativeSampling
from servekernels.trace.families.fused_add_norm import FusedAddRmsnorm
from servekernels.trace.families.gemm import Fp8GroupwiseGemm, Gemm
from servekernels.trace.families.gqa import GqaPaged
from servekernels.trace.families.gqa_ragged import GqaRagged
from servekernels.trace.families.merge import MergeState, MergeStateInPlace, MergeStates
from servekernels.trace.families.mla import MlaPagedDecode
from servekernels.trace.families.mla_prefill import MlaPagedPrefill
from servekernels.trace.families.mla_ragged import MlaRagged
from servekernels.trace.families.moe import KINDS as MOE_KINDS, Bf16Moe, Fp8BlockMoe, Fp8PerTensorMoe
from servekernels.trace.families.norm import Rmsnorm
from servekernels.trace.families.page_append import AppendPagedKvCache
from servekernels.trace.families.rope import RopeCosSinCache
from servekernels.trace.families.routing import FusedTopkDeepseek
from servekernels.trace.families.single import SingleDecode, SinglePrefill
from servekernels.trace.families.trtllm import TrtllmBatchContext, TrtllmBatchDecode
from servekernels.trace.families.sampling import SamplingFromLogits, SamplingFromProbs
from servekernels.trace.schema import Definition

# every published-family adapter, one entry each (a new adapter adds its line here); ``families`` keeps those
# whose op the registry has
ADAPTERS: tuple[Family, ...] = (GqaPaged(decode=True), GqaPaged(decode=False), Rmsnorm(), MergeStates(),
                                MlaPagedDecode(), GqaRagged(), MlaPagedPrefill(),
                                MlaRagged(), MergeState(), MergeStateInPlace(), SingleDecode(), SinglePrefill(),
                                AppendPagedKvCache(), TrtllmBatchDecode(),
                                TrtllmBatchContext())
ADAPTERS += (Rmsnorm(gemma=True), FusedAddRmsnorm())  # the norms (norm.py, fused_add_norm.py)
ADAPTERS += (*(Fp8BlockMoe(kind) for kind in MOE_KINDS), Bf16Moe(), Bf16Moe(routed=True),
             Fp8PerTensorMoe())  # moe.py (the last: recognised, not judged)
ADAPTERS += (RopeCosSinCache("fib"), RopeCosSinCache("fi"))  # rope.py
ADAPTERS += (SamplingFromProbs(), SamplingFromLogits())  # the samplers, judged statistically (sampling.py)
ADAPTERS += (ChainSpeculativeSampling(),)  # chain.py: speculative verification, judged statistically
ADAPTERS += (FusedTopkDeepseek(),)  # DeepSeek-V3 routing alone (routing.py)
ADAPTERS += (Gemm("fib"), Gemm("tinygemm"), Gemm("router"))  # gemm.py
ADAPTERS += (Fp8GroupwiseGemm("groupwise"), Fp8GroupwiseGemm("sm90"))  # gemm.py: fp8 block-scale GEMMs


def families() -> list[Family]:
    """Every family: the published ones first, then one ``Generic`` per op of the registry."""
    ops = registry()
    return [f for f in ADAPTERS if f.op in ops] + [Generic(op) for op in ops]


def judged_families() -> dict:
    """``{published family or template prefix: op}`` for every adapter whose op the registry has."""
    return {p: f.op for f in families() if not isinstance(f, Generic) for p in f.published}


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
