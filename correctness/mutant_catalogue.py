"""The project's planted bugs, as data: ``python -m correctness.mutants`` runs them (see its docstring).

Each mutant is one small patch of one source file: ``old`` (a snippet that occurs exactly once in ``file``)
becomes ``new``; the mutated module must still import. ``tests`` are the pytest arguments (files, node ids,
``-k``) that should kill it, kept narrow so the whole catalogue runs in minutes under the interpreter.
``equivalent`` names the argument why a mutant cannot change any result (it is then excluded, by name, from the
kill rate); ``slow`` keeps a mutant out of CI's small rotating sample (it still runs in the full catalogue).
``correctness/test_mutants.py`` checks every snippet against the current sources, so an edit to a kernel that
moves a snippet fails the default test command instead of silently dropping a mutant.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]
    equivalent: str | None = None
    slow: bool = False


PREFILL = "kernels/triton/ops/paged_prefill.py"
DECODE = "kernels/triton/ops/paged_decode.py"
MERGE = "kernels/triton/ops/merge_states.py"
DENSE = "kernels/triton/ops/grouped_gemm.py"
INT4 = "kernels/triton/ops/grouped_gemm_int4.py"
FP8 = "kernels/triton/ops/grouped_gemm_fp8.py"
MXFP4 = "kernels/triton/ops/grouped_gemm_mxfp4.py"
KVW = "kernels/triton/ops/write_kv.py"
MOE = "kernels/triton/ops/fused_moe.py"
ROUTE = "kernels/triton/ops/route.py"
QUANT = "kernels/triton/quant.py"
NORM = "kernels/triton/ops/rms_norm.py"
ADD_NORM = "kernels/triton/ops/fused_add_rms_norm.py"
QUANT_NORM = "kernels/triton/ops/rms_norm_quant_fp8.py"
ROPE = "kernels/triton/ops/rotary_embedding.py"
COMMON = "kernels/triton/common.py"
INTERP = "kernels/interpreter_fixes.py"

T_PREFILL = "correctness/test_paged_prefill.py"
T_DECODE = "correctness/test_paged_decode.py"
T_MERGE = "correctness/test_merge_states.py"
T_DENSE = "correctness/test_grouped_gemm.py"
T_INT4 = "correctness/test_grouped_gemm_int4.py"
T_FP8 = "correctness/test_grouped_gemm_fp8.py"
T_MXFP4 = "correctness/test_grouped_gemm_mxfp4.py"
T_KVW = "correctness/test_write_kv.py"
T_ROUTE = "correctness/test_route.py"
T_PERMUTE = "correctness/test_moe_permute.py"
T_MOE = "correctness/test_fused_moe.py"
T_MOE_MX = "correctness/test_fused_moe_mxfp4.py"
T_QFP8 = "correctness/test_quantize_fp8.py"
T_NORM = "correctness/test_rms_norm.py"
T_ADD_NORM = "correctness/test_fused_add_rms_norm.py"
T_QUANT_NORM = "correctness/test_rms_norm_quant_fp8.py"
T_ROPE = "correctness/test_rotary_embedding.py"
T_QINT4 = "correctness/test_quantize_int4.py"
T_POOL = "correctness/test_engine_block_pool.py"
T_SCHED = "correctness/test_engine_scheduler.py"
T_EQUIV = "correctness/test_engine_equivalence.py"
T_LIFE = "correctness/test_engine_lifecycle.py"
T_REF_ATT = "correctness/test_reference_attention.py"
SAMPLE = "kernels/triton/ops/top_k_top_p_sample.py"
T_SAMPLE = "correctness/test_top_k_top_p_sample.py"
REJECT = "kernels/triton/ops/rejection_sample.py"
T_REJECT = "correctness/test_rejection_sample.py"

M = Mutant

CATALOGUE: list[Mutant] = [
    # ------------------------------------------------------------------ paged prefill
    M("prefill-causal-sees-next-key", PREFILL,
      "(keys[None, :] <= positions[:, None])", "(keys[None, :] <= positions[:, None] + 1)",
      "causal bound one too far: a query sees the key after it", (T_PREFILL, "-k", "matches_reference")),
    M("prefill-causal-misses-own-key", PREFILL,
      "(keys[None, :] <= positions[:, None])", "(keys[None, :] < positions[:, None])",
      "causal bound one short: a query does not see its own key", (T_PREFILL, "-k", "matches_reference")),
    M("prefill-window-one-wider", PREFILL,
      "(keys[None, :] > positions[:, None] - sliding_window)", "(keys[None, :] >= positions[:, None] - sliding_window)",
      "sliding window W + 1 keys wide", (T_PREFILL, "-k", "matches_reference and window")),
    M("prefill-window-first-tile", PREFILL,
      "kv_begin = tl.maximum(context + first_q - sliding_window + 1, 0)",
      "kv_begin = tl.maximum(context + first_q - sliding_window + 2, 0)",
      "key loop starts one key late: the first query's oldest window key can fall in a tile never loaded",
      ("correctness/test_sliding_window_tile_alignment.py", T_PREFILL, "-k", "window")),
    M("prefill-kv-end-short", PREFILL,
      "kv_end = context + last_q + 1", "kv_end = context + last_q",
      "key loop ends before the tile's last query's own key", (T_PREFILL, "-k", "matches_reference")),
    M("prefill-key-tail-mask", PREFILL,
      "key_ok = keys < kv_end  #", "key_ok = keys <= kv_end  #",
      "tail mask lets one key past the last visible one be loaded (a slot the sequence may not own)",
      (T_PREFILL,)),
    M("prefill-gqa-head-map", PREFILL,
      "heads = kv_head * GROUP + rows % GROUP", "heads = kv_head + rows % GROUP * (GROUP // GROUP)",
      "GQA: query head h paired with the wrong KV head", (T_PREFILL, "-k", "matches_reference")),
    M("prefill-lse-base-2", PREFILL,
      "(m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)",
      "(m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 1.0)",
      "LSE left in base 2 (no ln 2 factor)", (T_PREFILL, "-k", "matches_reference")),
    M("prefill-empty-row-max", PREFILL,
      "m_safe = tl.where(m_new == float(\"-inf\"), 0.0, m_new)", "m_safe = m_new",
      "online softmax: a row with nothing visible yet subtracts -inf (NaN)", (T_PREFILL, "-k", "window")),
    M("prefill-v-scale-dropped", PREFILL,
      "        out = out * v_scale\n", "        out = out * 1.0\n",
      "fp8 cache: v_scale never applied", (T_PREFILL, "-k", "fp8cache")),
    M("prefill-softcap-base", PREFILL,
      "s = _soft_cap(s * logit_scale, soft_cap) * 1.4426950408889634",
      "s = _soft_cap(s * logit_scale, soft_cap)",
      "soft-capped logits not converted to base 2", (T_PREFILL, "-k", "softcap")),
    M("prefill-find-sequence", PREFILL,
      "if first_tile <= tile:", "if first_tile < tile:",
      "tile -> sequence binary search off by one", (T_PREFILL, "-k", "matches_reference")),
    M("prefill-sink-per-split", PREFILL,
      "sink = tl.where(split == 0, sink, float(\"-inf\"))  # counted once per row: in split 0 only",
      "sink = tl.where(split >= 0, sink, float(\"-inf\"))  # counted once per row: in split 0 only",
      "every KV split opens at the sink: merged, a split row counts its sink once per split",
      (T_PREFILL, "-k", "sink")),
    M("prefill-sink-dropped-on-fp8", PREFILL,
      "HAS_SINKS=sinks is not None)", "HAS_SINKS=sinks is not None and not dims.kv_is_fp8)",
      "the sinks are ignored on the fp8 cache path", (T_PREFILL, "-k", "sink")),
    # ------------------------------------------------------------------ paged decode
    M("decode-sink-per-partition", DECODE,
      "sink = tl.where(part == 0, sink, float(\"-inf\"))  # counted once per sequence: in partition 0 only",
      "sink = tl.where(part >= 0, sink, float(\"-inf\"))  # counted once per sequence: in partition 0 only",
      "every split-KV partition opens at the sink: merged, a split sequence counts its sink once per partition",
      (T_DECODE, "-k", "sink")),
    M("decode-sink-dropped-on-fp8", DECODE,
      "HAS_SINKS=sinks is not None,", "HAS_SINKS=sinks is not None and not dims.kv_is_fp8,",
      "the sinks are ignored on the fp8 cache path", (T_DECODE, "-k", "sink")),
    M("decode-window-one-wider", DECODE,
      "lo = tl.maximum(seq_len - window, 0)", "lo = tl.maximum(seq_len - window - 1, 0)",
      "sliding window W + 1 keys wide", (T_DECODE, "-k", "sliding_window")),
    M("decode-split-floor", DECODE,
      "plen = tl.cdiv(seq_len - lo, num_parts)", "plen = (seq_len - lo) // num_parts",
      "num_splits: partition length rounded down, the span's tail keys dropped", (T_DECODE, "-k", "num_splits")),
    M("decode-split-overlap", DECODE,
      "end = tl.minimum(start + plen, seq_len)", "end = tl.minimum(start + plen + 1, seq_len)",
      "split boundary: neighbouring partitions share a key (counted twice)", (T_DECODE, "-k", "splits or parity")),
    M("decode-tail-mask", DECODE,
      "valid = tok < end", "valid = tok < seq_len",
      "partition tail mask uses seq_len: a partition reads its neighbour's keys",
      (T_DECODE, "-k", "num_splits")),
    M("decode-gqa-head-map", DECODE,
      "heads = kvh * group + offs_m", "heads = kvh + offs_m",
      "GQA: query heads read from the wrong KV head", (T_DECODE, "-k", "parity")),
    M("decode-lse-base-2", DECODE,
      "lse = tl.where(empty, float(\"-inf\"), (m_i + tl.log2(l_safe)) * LN2 + poison)",
      "lse = tl.where(empty, float(\"-inf\"), (m_i + tl.log2(l_safe)) + poison)",
      "partial LSE in base 2: wrong returned LSE and wrong split merge", (T_DECODE, "-k", "parity")),
    M("decode-v-scale-dropped", DECODE,
      "acc * (v_scale / l_safe)[:, None]", "acc * (1.0 / l_safe)[:, None]",
      "fp8 cache: v_scale never applied", (T_DECODE, "-k", "fp8")),
    M("decode-softcap-sign", DECODE,
      "return cap * tl.where(x < 0, -t, t)", "return cap * t",
      "soft-cap loses the sign of negative logits", (T_DECODE, "-k", "soft_cap")),
    M("decode-heuristic-tile-multiple", DECODE,
      "part_len = max(-(-max_span // want) // tile * tile, MIN_SPLIT_TOKENS, tile)",
      "part_len = max(-(-max_span // want), MIN_SPLIT_TOKENS, tile)",
      "split heuristic: partitions no longer a multiple of the tile", (T_DECODE, "-k", "heuristic")),
    M("decode-pv-accumulator-in-input-dtype", DECODE,
      "acc = mma(p.to(q.dtype), v, acc * alpha[:, None])",
      "acc = mma(p.to(q.dtype), v, (acc * alpha[:, None]).to(q.dtype).to(tl.float32))",
      "P.V running sum rounded to q's dtype every tile (an fp16/bf16 accumulator)",
      (T_DECODE, "-k", "half_precision_accumulator")),
    M("decode-pv-rounded-per-tile", DECODE,
      "acc = mma(p.to(q.dtype), v, acc * alpha[:, None])",
      "acc = mma(p.to(q.dtype), v, acc * alpha[:, None]).to(q.dtype).to(tl.float32)",
      "P.V accumulator stored in q's dtype after every tile's dot",
      (T_DECODE, "-k", "half_precision_accumulator")),
    M("attention-hint-one-short", "kernels/validate.py",
      "bound_seq = max_blocks * block_size if hint_seq is None else hint_seq\n",
      "bound_seq = max_blocks * block_size if hint_seq is None else hint_seq - 1\n",
      "validate=False plans for max_seq_len - 1 keys (the hint read as the last key's index)",
      ("correctness/test_no_host_read.py", "-k", "bitwise or exact_hint")),
    # ------------------------------------------------------------------ merge_states
    M("merge-empty-partial-read", MERGE,
      "if w > 0:  #", "if w >= 0:  #",
      "an empty partial's (NaN) out is multiplied in", (T_MERGE, "-k", "empty")),
    M("merge-lse-base-2", MERGE,
      "lse = tl.where(nonempty, m_safe + tl.log(tl.where(nonempty, total, 1.0)), float(\"-inf\"))",
      "lse = tl.where(nonempty, m_safe + tl.log2(tl.where(nonempty, total, 1.0)), float(\"-inf\"))",
      "merged LSE uses log2 of the weight sum", (T_MERGE, "-k", "split_equals")),
    M("merge-poison-inf-ignored", MERGE,
      "        bad = (l_s != l_s) | (l_s == float(\"inf\"))\n", "        bad = l_s != l_s\n",
      "a +inf partial LSE no longer poisons the row", ("correctness/test_nan.py", "-k", "merge")),
    M("merge-all-empty-max", MERGE,
      "m_safe = tl.where(m == float(\"-inf\"), 0.0, m)", "m_safe = m",
      "no guard on an all-empty row's running max",
      (T_MERGE, "-k", "empty"),
      equivalent="m is -inf only when every partial is empty (or poisoned, which overrides out and lse): then "
                 "every weight is exp(-inf - -inf) = NaN, `w > 0` is False for NaN, total stays 0 and the row "
                 "gets out 0 and lse -inf exactly as with m_safe = 0; otherwise m is finite and m_safe == m"),
    # ------------------------------------------------------------------ top_k_top_p_sample
    M("sample-topk-keeps-one-more", SAMPLE,
      "lo = tl.where(c >= k, mid, lo)\n                            hi = tl.where(c >= k, hi, mid)",
      "lo = tl.where(c > k, mid, lo)\n                            hi = tl.where(c > k, hi, mid)",
      "top-k cut at the (k+1)-th largest: one token past the boundary kept", (T_SAMPLE, "-k", "slow_path")),
    M("sample-topp-drops-last-group", SAMPLE,
      "                        xp = hi\n                    kept = has",
      "                        xp = hi + 1\n                    kept = has",
      "top-p loses its last kept token (and its ties)", (T_SAMPLE, "-k", "slow_path or parity_on_check")),
    M("sample-greedy-last-maximum", SAMPLE,
      "lane_id = tl.where(l > lane_max, offs, lane_id)", "lane_id = tl.where(l >= lane_max, offs, lane_id)",
      "temperature 0 breaks a tied maximum to the higher id", (T_SAMPLE, "-k", "greedy")),
    # ------------------------------------------------------------------ rejection_sample
    M("rejection-accepts-ruled-out", REJECT,
      "accepted = (p_t > 0.0) & (u * p_d <= p_t)", "accepted = u * p_d <= p_t",
      "a draft token of target probability 0 accepted at a uniform of 0", (T_REJECT, "-k", "parity")),
    M("rejection-recovers-from-target", REJECT,
      "r = tl.where(valid, tl.maximum(p - q, 0.0) / n, 0.0)", "r = tl.where(valid, p / n, 0.0)",
      "the recovered token drawn from the target instead of the residual max(0, target - draft)",
      (T_REJECT, "-k", "parity")),
    # ------------------------------------------------------------------ dense grouped GEMM
    M("gemm-k-tail-mask", DENSE,
      "        k_ok = ks < K - k0\n        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)\n"
      "        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)\n        acc = mma(a, w, acc)",
      "        k_ok = ks < K\n        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)\n"
      "        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)\n        acc = mma(a, w, acc)",
      "K tail not masked: the last K step reads past K", (T_DENSE, "-k", "parity_skewed or strided")),
    M("gemm-accumulate-in-input-dtype", DENSE,
      "        acc = mma(a, w, acc)\n", "        acc = mma(a, w, acc.to(a.dtype).to(tl.float32))\n",
      "the running sum is rounded to the input dtype every K step (fp16/bf16 accumulation)",
      (T_DENSE, "-k", "parity_skewed")),
    M("gemm-tile-table-search", DENSE,
      "e = torch.searchsorted(ends, i, right=True)", "e = torch.searchsorted(ends, i, right=False)",
      "tile -> expert table: a group's last tile given to the next expert", (T_DENSE, "-k", "tile_table")),
    M("gemm-surplus-tile-reads", DENSE,
      "    if first >= end:\n        return  # a surplus entry of a bound-sized tile table\n", "",
      "surplus programs of a shape-sized grid run the K loop (rows masked off, weights read) before storing nothing",
      ("correctness/test_counting.py", "-k", "surplus")),
    # ------------------------------------------------------------------ int4 grouped GEMM
    M("int4-nibble-order", INT4,
      "w_lo = ((packed & 0xF).to(tl.float32) - zero).to(a_ptr.dtype.element_ty)  # even k\n"
      "            w_hi = ((packed >> 4).to(tl.float32) - zero).to(a_ptr.dtype.element_ty)  # odd k",
      "w_lo = ((packed >> 4).to(tl.float32) - zero).to(a_ptr.dtype.element_ty)  # even k\n"
      "            w_hi = ((packed & 0xF).to(tl.float32) - zero).to(a_ptr.dtype.element_ty)  # odd k",
      "nibble order swapped: even k read from the high nibble", (T_INT4, "-k", "parity_skewed")),
    M("int4-zero-point-group", INT4,
      "zero = tl.load(z_ptrs + g * stride_zg, mask=col_ok, other=0)",
      "zero = tl.load(z_ptrs, mask=col_ok, other=0)",
      "zero points: every group uses group 0's", (T_INT4, "-k", "parity_skewed")),
    M("int4-symmetric-zero", INT4,
      "            zero = 8.0\n", "            zero = 7.0\n",
      "symmetric weights: zero point 7 instead of 8", (T_INT4, "-k", "parity_skewed")),
    M("int4-scale-groups-reversed", INT4,
      "scale = tl.load(s_ptrs + g * stride_sg, mask=col_ok, other=0.0)",
      "scale = tl.load(s_ptrs + (K // GROUP - 1 - g) * stride_sg, mask=col_ok, other=0.0)",
      "scale groups applied in reverse K order", (T_INT4, "-k", "parity_skewed")),
    M("int4-odd-columns", INT4,
      "a_odd = a_even + stride_ak", "a_odd = a_even",
      "odd-k activations read from the even column", (T_INT4, "-k", "parity_skewed")),
    M("int4-zeros-with-scale-strides", INT4,
      "        zr.stride(0), zr.stride(1), zr.stride(2),\n",
      "        sc.stride(0), sc.stride(1), sc.stride(2),\n",
      "zero points indexed with the scales' strides (right only when both share a layout)",
      (T_INT4, "-k", "zero_points_with_strides or parity_skewed")),
    M("int4-zero-group-stride", INT4,
      "zero = tl.load(z_ptrs + g * stride_zg, mask=col_ok, other=0)",
      "zero = tl.load(z_ptrs + g * stride_sg, mask=col_ok, other=0)",
      "zero points step through the groups with the scales' group stride",
      (T_INT4, "-k", "zero_points_with_strides or parity_skewed")),
    M("int4-surplus-tile-reads", INT4,
      "    if first >= end:\n        return  # a surplus entry of a bound-sized tile table\n", "",
      "surplus programs of a shape-sized grid read their expert's packed weights and scales before storing nothing",
      ("correctness/test_counting.py", "-k", "surplus")),
    # ------------------------------------------------------------------ MXFP4 grouped GEMM
    M("mxfp4-scale-read-past-k", MXFP4,
      "    for blk in range(b_lo, b_hi):\n", "    for blk in range(b_lo, b_hi + (pid_k == num_splits - 1)):\n",
      "the last K slice runs one MX block past K: reads the scale byte past each row's end (and codes and "
      "activations past K)", (T_MXFP4, "-k", "parity_skewed")),
    M("mxfp4-bias-ignored", MXFP4,
      "        if pid_k == 0:  # the bias once per output", "        if pid_k < 0:  # the bias once per output",
      "the bias is never added", (T_MXFP4, "-k", "parity_skewed or bias")),
    M("mxfp4-nibble-order", MXFP4,
      "w_lo = e2m1_twice(packed & 0xF).to(a_ptr.dtype.element_ty)  # even k\n"
      "        w_hi = e2m1_twice(packed >> 4).to(a_ptr.dtype.element_ty)  # odd k",
      "w_lo = e2m1_twice(packed >> 4).to(a_ptr.dtype.element_ty)  # even k\n"
      "        w_hi = e2m1_twice(packed & 0xF).to(a_ptr.dtype.element_ty)  # odd k",
      "nibble order swapped: even k read from the high nibble", (T_MXFP4, "-k", "parity_skewed")),
    M("mxfp4-e2m1-top-code", MXFP4,
      "twice = (m + tl.maximum(m - 4, 0) + 2 * tl.maximum(m - 6, 0))",
      "twice = (m + tl.maximum(m - 4, 0) + tl.maximum(m - 6, 0))",
      "E2M1 code 7 read as 5 instead of 6", (T_MXFP4, "-k", "parity_skewed")),
    M("mxfp4-nan-scale-finite", MXFP4,
      "    return tl.where(s32 == 255, float(\"nan\"), bits.to(tl.float32, bitcast=True))",
      "    return bits.to(tl.float32, bitcast=True)",
      "E8M0 255 read as 2**127 instead of NaN", (T_MXFP4, "-k", "nan_scale")),
    M("mxfp4-small-scales", MXFP4,
      "0x200000 << tl.minimum(s32, 1)", "0x200000",
      "E8M0 1 (2**-126) read as 2**-127", (T_MXFP4, "-k", "nan_scale")),
    # ------------------------------------------------------------------ fp8 grouped GEMM
    M("fp8-block-scale-n-axis", FP8,
      "ws_ptrs = ws_ptr + e * stride_wse + (cols // w_bn) * stride_wsn",
      "ws_ptrs = ws_ptr + e * stride_wse + (cols // w_bk) * stride_wsn",
      "block weight scales: the N block index divides by bk (scale axes swapped)",
      (T_FP8, "-k", "parity_skewed or property")),
    M("fp8-block-scale-k-axis", FP8,
      "w_scale = tl.load(ws_ptrs + (k0 // w_bk) * stride_wsk, mask=col_ok, other=0.0)",
      "w_scale = tl.load(ws_ptrs + (k0 // w_bn) * stride_wsk, mask=col_ok, other=0.0)",
      "block weight scales: the K block index divides by bn (scale axes swapped)",
      (T_FP8, "-k", "parity_skewed or property")),
    M("fp8-act-scale-group", FP8,
      "a_scale = tl.load(as_ptrs + (k0 // a_group) * stride_asg, mask=row_ok, other=0.0)",
      "a_scale = tl.load(as_ptrs, mask=row_ok, other=0.0)",
      "activation scales: every K step uses group 0's", (T_FP8, "-k", "parity_skewed")),
    M("fp8-tensor-scale-expert", FP8,
      "acc = acc * tl.load(ws_ptr + e * stride_wse)", "acc = acc * tl.load(ws_ptr)",
      "per-tensor weight scale: every expert uses expert 0's", (T_FP8, "-k", "parity_skewed")),
    M("fp8-channel-scale", FP8,
      "acc = acc * tl.load(ws_ptr + e * stride_wse + cols64 * stride_wsn, mask=col_ok, other=0.0)[None, :]",
      "acc = acc * tl.load(ws_ptr + e * stride_wse + (cols64 // 2) * stride_wsn, mask=col_ok, other=0.0)[None, :]",
      "per-channel weight scales: column n uses channel n // 2's", (T_FP8, "-k", "parity_skewed")),
    M("fp8-scale-span-min", FP8,
      "span = math.gcd(*bounds) if bounds else", "span = min(bounds) if bounds else",
      "scale span = the smaller of activation group and weight block K (not their gcd): a block that starts "
      "inside a group keeps the previous block's scales", (T_FP8, "-k", "parity_skewed")),
    M("fp8-scale-span-max", FP8,
      "span = math.gcd(*bounds) if bounds else", "span = max(bounds) if bounds else",
      "scale span = the larger of activation group and weight block K: a group that starts inside a block "
      "keeps the previous group's scales", (T_FP8, "-k", "parity_skewed")),
    M("fp8-surplus-tile-reads", FP8,
      "    if first >= end:\n        return  # a surplus entry of a bound-sized tile table\n", "",
      "surplus programs of a shape-sized grid read their expert's fp8 weights and scales before storing nothing",
      ("correctness/test_counting.py", "-k", "surplus")),
    # ------------------------------------------------------------------ write_kv
    M("kvwrite-negative-slot", KVW,
      "write = in_range & (slots >= 0)", "write = in_range",
      "a negative slot is written (to slot 0) instead of skipped", (T_KVW, "-k", "matches_reference or skipped")),
    M("kvwrite-ties-away", KVW,
      "units = (tl.abs(x) / step + magic) - magic", "units = tl.floor(tl.abs(x) / step + 0.5)",
      "fp8 store rounds ties away from zero", (T_KVW, "-k", "fp8")),
    M("kvwrite-saturation", KVW,
      "rounded = tl.minimum(units * step, 448.0)", "rounded = tl.minimum(units * step, 480.0)",
      "fp8 store saturates at 480 (the NaN code) instead of 448", (T_KVW, "-k", "fp8")),
    M("kvwrite-v-uses-k-scale", KVW,
      "v = _e4m3_bits(v.to(tl.float32).to(tl.float64) / v_scale)",
      "v = _e4m3_bits(v.to(tl.float32).to(tl.float64) / k_scale)",
      "fp8 values divided by k_scale", (T_KVW, "-k", "matches_reference")),
    M("kvwrite-int32-slot-offsets", KVW,
      "slots = tl.load(slot_mapping_ptr + tokens, mask=in_range, other=-1).to(tl.int64)",
      "slots = tl.load(slot_mapping_ptr + tokens, mask=in_range, other=-1)",
      "slot arithmetic in the slot_mapping's dtype: an int32 slot's element offset wraps past 2**31",
      ("correctness/test_large_cache.py", "-k", "int32_slots")),
    # ------------------------------------------------------------------ norms and RoPE
    M("rms-norm-drops-eps", NORM,
      "r = tl.math.div_rn(1.0, tl.sqrt_rn(ms + eps))", "r = tl.math.div_rn(1.0, tl.sqrt_rn(ms))",
      "RMSNorm without eps: an all-zero row gives NaN, a row of magnitude 1e-3 is off by ~40 %",
      (T_NORM, "-k", "matches_the_reference")),
    M("rms-norm-mean-over-block", NORM,
      "ms = tl.sum(x * x, axis=0) / H", "ms = tl.sum(x * x, axis=0) / x.shape[0]",
      "the mean square divides by the padded row width instead of H", (T_NORM, "-k", "matches_the_reference")),
    M("fused-add-norm-skips-residual-update", ADD_NORM,
      "tl.store(res_ptrs, stored, mask=mask)", "tl.store(res_ptrs, stored, mask=mask & (first == 0))",
      "the residual update is skipped past the first program's rows (the output still right)",
      (T_ADD_NORM, "-k", "matches_the_reference")),
    M("fused-add-norm-of-the-old-residual", ADD_NORM,
      "y = normalize_row(stored.to(tl.float32), w, H, eps)", "y = normalize_row(x, w, H, eps)",
      "the norm of x instead of the new residual", (T_ADD_NORM, "-k", "matches_the_reference")),
    M("norm-quant-amax-without-abs", QUANT_NORM,
      "amax = tl.maximum(tl.max(tl.abs(y), axis=1), AMAX_MIN)", "amax = tl.maximum(tl.max(y, axis=1), AMAX_MIN)",
      "a group's scale from its largest value instead of its largest magnitude", (T_QUANT_NORM, "-k", "reference")),
    M("rope-neox-as-gptj", ROPE,
      "first, second = pairs, pairs + half", "first, second = 2 * pairs, 2 * pairs + 1",
      "NeoX's halves rotated as GPT-J's interleaved pairs", (T_ROPE, "-k", "matches_the_reference")),
    M("rope-sin-sign", ROPE,
      "tl.store(pa, (a * cos[None, :] - b * sin[None, :])", "tl.store(pa, (a * cos[None, :] + b * sin[None, :])",
      "the first element of a pair rotated the wrong way", (T_ROPE, "-k", "matches_the_reference")),
    # ------------------------------------------------------------------ MoE: route, permute, activation, un-permute
    M("route-ties-to-higher-id", ROUTE,
      "idx = tl.min(tl.where(candidate, cols[None, :], BLOCK_E), axis=1)",
      "idx = tl.max(tl.where(candidate, cols[None, :], -1), axis=1)",
      "routing ties go to the higher expert id", (T_ROUTE, "-k", "ties")),
    M("route-no-renormalise", ROUTE,
      "w = chosen / tl.sum(chosen, axis=1)[:, None]", "w = chosen / norm[:, None]",
      "renormalize=True ignored: weights stay softmax over all experts", (T_ROUTE, "-k", "renormalize")),
    M("route-softmax-unshifted", ROUTE,
      "tl.exp(logits - row_max[:, None])", "tl.exp(logits)",
      "softmax without the row max: overflows on large logits", (T_ROUTE,)),
    M("route-bias-weighs", ROUTE,
      "tl.sum(tl.where(hit, num, 0.0), axis=1)", "tl.sum(tl.where(hit, choice * norm[:, None], 0.0), axis=1)",
      "the chosen experts are weighed with their biased scores s + bias", (T_ROUTE, "-k", "bias or deepseek")),
    M("route-bias-ignored", ROUTE,
      "        rank = tl.where(choice != choice, float(\"-inf\"), choice)\n",
      "        rank = tl.where(is_nan, float(\"-inf\"), logits)\n",
      "experts chosen on the logits, the selection bias ignored (groups still scored with it)",
      (T_ROUTE, "-k", "bias or deepseek")),
    M("route-group-score-top1", ROUTE,
      "two = first | (cols[None, :] == i2[:, None])", "two = first",
      "a group is scored by its best expert alone (DeepSeek-V2's greedy), not the sum of its two best",
      (T_ROUTE, "-k", "groups_limit or deepseek")),
    M("route-group-ties-to-higher-id", ROUTE,
      "last_id = tl.min(tl.where(~gtaken & (gscores == last_score[:, None]), gcols[None, :], BLOCK_G), axis=1)",
      "last_id = tl.max(tl.where(~gtaken & (gscores == last_score[:, None]), gcols[None, :], -1), axis=1)",
      "tied groups: the higher group id is kept", (T_ROUTE, "-k", "group_ties")),
    M("route-kept-groups-threshold", ROUTE,
      "(gid[None, :] <= last_id[:, None])", "(gid[None, :] < last_id[:, None])",
      "the last kept group drops out when another group ties with it", (T_ROUTE, "-k", "group_ties or deepseek")),
    M("route-sigmoid-branches", ROUTE,
      "num = tl.where(logits >= 0, 1.0 / (1.0 + z), z / (1.0 + z))",
      "num = tl.where(logits >= 0, z / (1.0 + z), 1.0 / (1.0 + z))",
      "the stable sigmoid's branches swapped", (T_ROUTE, "-k", "sigmoid or deepseek")),
    M("route-no-scaling", ROUTE,
      "    w = w * scaling\n", "    w = w * 1.0\n",
      "routed_scaling_factor ignored", (T_ROUTE, "-k", "deepseek or bias_selects")),
    M("permute-unstable", MOE,
      "    sorted_ids, order = torch.sort(flat, stable=True)\n",
      "    sorted_ids, order = torch.sort(flat.flip(0), stable=True)\n    order = flat.numel() - 1 - order\n",
      "expert permutation reverses (token, slot) order within an expert", (T_PERMUTE,)),
    M("unpermute-slot0-weight", MOE,
      "w = tl.load(w_ptr + t * TOP_K + j).to(tl.float32)", "w = tl.load(w_ptr + t * TOP_K).to(tl.float32)",
      "un-permute weights every slot with slot 0's weight", (T_MOE, "-k", "dense_matches or weights")),
    M("unpermute-row-map", MOE,
      "row_of[sorted_index.long()] = torch.arange(", "row_of = sorted_index.clone()\n    _unused = torch.arange(",
      "un-permute uses the permutation instead of its inverse", (T_MOE, "-k", "dense_matches")),
    M("moe-token-of-slot", MOE,
      "token_of = (sorted_index // top_k).long()", "token_of = (sorted_index % top_k).long()",
      "gather reads the slot index as the token", (T_MOE, "-k", "dense_matches")),
    M("swiglu-oai-halves", MOE,
      "    base = rows.to(tl.int64)[:, None] * stride_gm + 2 * cols[None, :]\n"
      "    gate = tl.load(gu_ptr + base, mask=mask, other=0.0).to(tl.float32)\n"
      "    up = tl.load(gu_ptr + base + 1, mask=mask, other=0.0).to(tl.float32)\n",
      "    base = rows.to(tl.int64)[:, None] * stride_gm + cols[None, :]\n"
      "    gate = tl.load(gu_ptr + base, mask=mask, other=0.0).to(tl.float32)\n"
      "    up = tl.load(gu_ptr + base + I, mask=mask, other=0.0).to(tl.float32)\n",
      "swiglu_oai reads gate and up as halves (SiLU's layout) instead of interleaved",
      (T_MOE_MX, "-k", "swiglu_oai_with_biases")),
    M("swiglu-oai-gate-unclamped", MOE,
      "    gate = tl.minimum(gate, LIMIT, propagate_nan=tl.PropagateNan.ALL)\n", "",
      "swiglu_oai does not clamp the gate at 7", (T_MOE_MX, "-k", "swiglu_oai_with_biases")),
    M("swiglu-oai-up-plus-one", MOE,
      "    h = gate * sigmoid * (up + 1.0)\n", "    h = gate * sigmoid * up\n",
      "swiglu_oai multiplies by up instead of (up + 1)", (T_MOE_MX, "-k", "swiglu_oai_with_biases")),
    M("swiglu-oai-up-clamp-nan", MOE,
      "    up = tl.maximum(tl.minimum(up, LIMIT, propagate_nan=tl.PropagateNan.ALL), -LIMIT,\n"
      "                    propagate_nan=tl.PropagateNan.ALL)\n",
      "    up = tl.maximum(tl.minimum(up, LIMIT), -LIMIT)\n",
      "the up clamp drops NaN on a GPU (min/max without NaN propagation; the interpreter's numpy keeps it)",
      (T_MOE_MX, "-k", "swiglu_oai_with_biases"),
      equivalent="under the interpreter tl.minimum / tl.maximum are numpy's, which propagate NaN either way; on "
                 "a GPU the default min.f32 / max.f32 drop it"),
    M("moe-bias-rows-unpermuted", MOE,
      "        expert_of = topk_ids.reshape(-1).long().index_select(0, sorted_index.long())",
      "        expert_of = topk_ids.reshape(-1).long()",
      "the biases of dense / int4 / fp8 experts indexed by (token, slot) order instead of the expert-sorted rows",
      (T_MOE_MX, "-k", "other_formats")),
    M("moe-mxfp4-w2-bias-dropped", MOE,
      "    y = _grouped(kind, _fp8_act(h) if kind == \"fp8\" else h, w2, offsets, batch_invariant, validate, w2_bias,",
      "    y = _grouped(kind, _fp8_act(h) if kind == \"fp8\" else h, w2, offsets, batch_invariant, validate, None,",
      "fused_moe drops w2_bias", (T_MOE_MX, "-k", "swiglu_oai_with_biases")),
    M("silu-sigmoid-branches", MOE,
      "sigmoid = tl.where(gate >= 0, 1.0 / (1.0 + z), z / (1.0 + z))",
      "sigmoid = tl.where(gate >= 0, z / (1.0 + z), 1.0 / (1.0 + z))",
      "silu's stable sigmoid has its branches swapped", (T_MOE, "-k", "dense_matches")),
    # ------------------------------------------------------------------ quantization
    M("quant-act-subnormal-step", QUANT,
      "e = tl.maximum(((ay.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)",
      "e = tl.maximum(((ay.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -7)",
      "fp8 activation rounding: subnormals rounded on a grid twice too fine", (T_QFP8, "-k", "act_quant")),
    M("quant-act-scale-max", QUANT,
      "scale = tl.math.div_rn(amax, tl.full((ROWS,), FP8_MAX, tl.float32))",
      "scale = tl.math.div_rn(amax, tl.full((ROWS,), FP8_MAX * 0.5, tl.float32))",
      "fp8 activation scale amax / 224: values saturate", (T_QFP8, "-k", "act_quant")),
    M("quant-int4-zero-clamp", QUANT,
      "z = torch.round(-lo / s).clamp(0, 15)", "z = torch.round(-lo / s).clamp(0, 14)",
      "int4 zero point clamped to 14", ("correctness/test_quantize_int4_zero_points.py", T_QINT4)),
    M("quant-int4-symmetric-clamp", QUANT,
      "nib = torch.round(wg / s[..., None]).clamp(-7, 7) + 8", "nib = torch.round(wg / s[..., None]).clamp(-8, 7) + 8",
      "symmetric int4 clamp allows -8", (T_QINT4,),
      equivalent="s = float32(amax / 7) >= amax / 7 * (1 - 2**-24) (AMAX_FLOOR only raises it), so "
                 "|w / s| <= 7 * (1 + 2**-23) and round(w / s) >= -7: the lower clamp never acts at -7 or -8"),
    M("quant-fp8-block-axes", QUANT,
      "s_full = s.repeat_interleave(bn, dim=1).repeat_interleave(bk, dim=2)[:, :n, :k]",
      "s_full = s.repeat_interleave(bk, dim=1).repeat_interleave(bn, dim=2)[:, :n, :k]",
      "fp8 block weight scales expanded along swapped axes", (T_QFP8, "-k", "weight_quant")),
    M("mma-drops-acc", COMMON,
      "    return tl.dot(a, b, acc)\n", "    return tl.dot(a, b)\n",
      "a 16-bit or fp8 tile product replaces the running sum instead of adding to it",
      (T_DENSE, "-k", "bfloat16")),
    M("interp-bf16-ties-down", INTERP,
      "rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)",
      "rounded = (bits + np.uint32(0x7FFF)) >> np.uint32(16)",
      "the interpreter's casts to bfloat16 round ties toward zero instead of to even",
      ("correctness/test_store_rounding.py", "correctness/test_interpreter_fixes.py", "-k", "bfloat16")),
    M("interp-dot-drops-last-k", INTERP,
      "for k in range(1, x.shape[-1]):", "for k in range(1, x.shape[-1] - 1):",
      "the interpreter's tl.dot leaves out the last K slice of every tile product",
      ("correctness/test_interpreter_fixes.py", "-k", "tl_dot")),
    # ------------------------------------------------------------------ references (the oracle itself)
    M("ref-causal-mask", "kernels/reference/attention.py",
      "    mask = t <= p\n", "    mask = t < p + 2\n",
      "reference causal mask sees the next key", (T_REF_ATT, "-k", "textbook")),
    M("ref-route-ties", "kernels/reference/routing.py",
      "return np.lexsort((-key, ineligible), axis=-1)[..., :k]",
      "return key.shape[-1] - 1 - np.lexsort((-key[..., ::-1], ineligible[..., ::-1]), axis=-1)[..., :k]",
      "reference routing ties go to the higher expert id", (T_ROUTE, "-k", "ties")),
    M("ref-route-group-score", "kernels/reference/routing.py",
      "return np.sort(c, axis=-1)[..., -2:].sum(axis=-1)", "return np.sort(c, axis=-1)[..., -1:].sum(axis=-1)",
      "reference groups scored by their best expert alone", ("correctness/test_reference_route.py",)),
    # ------------------------------------------------------------------ engine
    M("engine-prefix-hit-cap", "engine/kv_cache_manager.py",
      "max_blocks = (request.num_tokens - 1) // self.block_size",
      "max_blocks = request.num_tokens // self.block_size",
      "prefix-cache hit may cover the last token (nothing left to compute for its logits)", (T_POOL,)),
    M("engine-touch-refcount", "engine/block_pool.py",
      "            b.ref_cnt += 1\n", "            b.ref_cnt = 1\n",
      "a prefix-cache hit on a shared block resets its refcount to 1", (T_POOL, T_SCHED)),
    M("engine-free-refcount", "engine/block_pool.py",
      "            b.ref_cnt -= 1\n            if b.ref_cnt == 0:",
      "            b.ref_cnt -= 1\n            if b.ref_cnt <= 1:",
      "a block still held by another request goes back to the free queue", (T_POOL, T_SCHED)),
    M("engine-free-order", "engine/kv_cache_manager.py",
      "self.pool.free_blocks(reversed(blocks))", "self.pool.free_blocks(blocks)",
      "a request frees head first: shared heads evicted before its tail", (T_POOL,)),
    M("engine-revived-hits", "engine/kv_cache_manager.py",
      "revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)", "revived = 0",
      "hits revived from the free queue not counted against the free blocks", (T_POOL,)),
    M("engine-cache-partial-block", "engine/kv_cache_manager.py",
      "num_full = min(total // self.block_size, len(request.block_hashes))",
      "num_full = min(-(-total // self.block_size), len(request.block_hashes))",
      "a block is entered into the prefix cache before all its tokens are computed", (T_POOL, T_SCHED, T_EQUIV)),
    M("engine-preempt-oldest", "engine/scheduler.py",
      "victim = running.pop()  #", "victim = running.pop(0)  #",
      "preemption takes the oldest running request instead of the latest", (T_SCHED,)),
    M("engine-preempt-keeps-progress", "engine/scheduler.py",
      "        req.num_computed_tokens = 0\n        req.num_preemptions += 1",
      "        req.num_preemptions += 1",
      "a preempted request keeps its computed-token count (its freed K/V are assumed present)", (T_SCHED,)),
    M("engine-admit-after-preempt", "engine/scheduler.py",
      "        if not out.preempted:\n", "        if True:\n",
      "waiting requests are admitted in a step that preempted",
      ("correctness/test_engine_preemption_step.py", T_SCHED)),
    M("engine-threshold-ignored-on-admit", "engine/scheduler.py",
      "                n = req.num_tokens - num_hit\n"
      "                if 0 < threshold < n:\n                    n = threshold\n",
      "                n = req.num_tokens - num_hit\n",
      "long_prefill_token_threshold not applied to newly admitted requests", (T_SCHED,)),
    M("engine-logits-index", "engine/context.py",
      "logits_idx = (qsl[1:] - 1)[np.asarray(sampling, dtype=bool)]",
      "logits_idx = (qsl[:-1])[np.asarray(sampling, dtype=bool)]",
      "a request samples from its chunk's first token instead of its last", (T_LIFE, "-k", "lifecycle or context")),
    M("engine-slot-mapping", "engine/context.py",
      "slots = table[req, positions // block_size] * block_size + positions % block_size",
      "slots = table[req, positions // block_size] * block_size + (positions + 1) % block_size",
      "write_kv slot of a token shifted by one inside its block", (T_LIFE, "-k", "lifecycle or context")),
]
