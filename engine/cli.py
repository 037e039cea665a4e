"""``servekernels generate "prompt" ...``: run prompts through the engine, print text, steps and latency."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="+", help="prompts (byte-tokenized)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (per request; default: from --engine-seed)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--backend", choices=("triton", "reference"), default="triton")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=256)
    p.add_argument("--long-prefill-token-threshold", type=int, default=0)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--weight-quant", choices=("none", "int4", "fp8"), default="none")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--engine-seed", type=int, default=0)
    p.add_argument("--trace", metavar="OUT.json", default=None, help="write a Chrome trace of the engine's ranges")


def run(args: argparse.Namespace) -> int:
    from engine.config import ModelConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from kernels.nvtx import record_trace
    from kernels.runtime import machine_label

    cfg = ModelConfig(weight_quant=None if args.weight_quant == "none" else args.weight_quant, dtype=args.dtype,
                      seed=args.model_seed)
    engine = LLMEngine(cfg, backend=args.backend, block_size=args.block_size, num_blocks=args.num_blocks,
                       max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       long_prefill_token_threshold=args.long_prefill_token_threshold,
                       enable_prefix_caching=not args.no_prefix_caching, seed=args.engine_seed)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                            ignore_eos=args.ignore_eos)
    with record_trace() as trace:
        outputs = engine.generate(args.prompts, params)
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
