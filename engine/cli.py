"""``servekernels generate "prompt" ...``: run prompts through the engine, print text, steps and latency."""
from __future__ import annotations

import argparse

from kernels.nvtx import record_trace
from kernels.runtime import machine_label
from servekernels.usage import check_output_file, user_input


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="+", help="prompts (byte-tokenized; each needs at least one byte and must fit "
                   "below the model's context, 1024 tokens)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate per prompt, >= 1 (default 16)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (per request; default: from --engine-seed)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the EOS token")
    p.add_argument("--backend", choices=("triton", "reference"), default="triton",
                   help="triton kernels (default), or the float64 numpy references")
    p.add_argument("--block-size", type=int, default=16, help="KV cache block size in tokens, 1..256 (default 16)")
    p.add_argument("--num-blocks", type=int, default=256, help="KV cache blocks, counting the null block, >= 2 "
                   "(default 256)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="most requests in one step (default 16)")
    p.add_argument("--max-num-batched-tokens", type=int, default=256, help="most tokens in one step (default 256)")
    p.add_argument("--long-prefill-token-threshold", type=int, default=0,
                   help="chunk a prompt into steps of at most this many tokens (default 0: off)")
    p.add_argument("--no-prefix-caching", action="store_true", help="do not reuse KV blocks of shared prefixes")
    p.add_argument("--weight-quant", choices=("none", "int4", "fp8"), default="none",
                   help="quantize the expert weights (default none)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="model dtype (default float32)")
    p.add_argument("--model-seed", type=int, default=0, help="seed of the random model weights (default 0)")
    p.add_argument("--engine-seed", type=int, default=0, help="seed of the per-request sampling seeds (default 0)")
    p.add_argument("--trace", metavar="OUT.json", default=None,
                   help="write a Chrome trace of the engine's ranges (its directory must exist)")


def run(args: argparse.Namespace) -> int:
    from engine.config import EngineConfig, ModelConfig  # deferred: the engine imports torch; --help loads none
    from engine.llm_engine import LLMEngine  # deferred: the engine imports torch; --help loads none
    from engine.sampling_params import SamplingParams  # deferred: the engine imports torch; --help loads none

    limits = dict(block_size=args.block_size, num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs,
                  max_num_batched_tokens=args.max_num_batched_tokens,
                  long_prefill_token_threshold=args.long_prefill_token_threshold,
                  enable_prefix_caching=not args.no_prefix_caching)
    with user_input(vars(args)):  # everything the user typed is checked before the model is built
        if args.trace:
            check_output_file("--trace", args.trace)
        cfg = ModelConfig(weight_quant=None if args.weight_quant == "none" else args.weight_quant, dtype=args.dtype,
                          seed=args.model_seed)
        EngineConfig(**limits, max_model_len=cfg.max_model_len, seed=args.engine_seed)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                                ignore_eos=args.ignore_eos)
    engine = LLMEngine(cfg, backend=args.backend, **limits, seed=args.engine_seed)
    with user_input(vars(args)):
        ids = [engine.add_request(prompt, params) for prompt in args.prompts]
    with record_trace() as trace:
        outputs = engine.run_to_completion(ids)
    for prompt, o in zip(args.prompts, outputs):
        extra = f" ({o.abort_reason})" if o.abort_reason else ""
        print(f"[{o.request_id}] {o.finish_reason}{extra}, {len(o.output_token_ids)} tokens, "
              f"{o.num_cached_tokens} prompt tokens from the prefix cache")
        print(f"  prompt: {prompt!r}")
        print(f"  text:   {o.text!r}")
        print(f"  ids:    {o.output_token_ids}")
    print()
    print(engine.stats.format_table())
    print()
    label = f"backend {args.backend}" + (f", {machine_label()}" if args.backend == "triton" else ", numpy float64")
    print(engine.stats.format_summary(label))
    if args.trace:
        trace.write(args.trace)
        print(f"trace: {args.trace} ({len(trace.events)} ranges; open in Perfetto)")
    return 0
