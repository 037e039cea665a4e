"""Owns the model and the paged KV caches; turns a SchedulerOutput into one StepContext and runs the forward.

Each layer's cache is one ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` tensor (K = ``[0]``,
V = ``[1]``), filled with NaN at start: a kernel that reads a slot no request owns poisons the logits, and the
sampler refuses non-finite logits. With ``debug`` on (the tests turn it on) every block handed out in a step
is refilled with NaN before the forward, so stale K/V of a block's previous owner cannot hide a kernel that
reads past a sequence's end, and every layer's attention output is checked to be finite (one host sync per
layer: off by default).
"""
from __future__ import annotations

import torch

from engine.backend import Backend
from engine.config import EngineConfig, ModelConfig
from engine.context import StepContext
from engine.kv_cache_manager import KVCacheManager
from engine.model import TORCH_DTYPES, Model
from engine.scheduler import SchedulerOutput


class ModelRunner:
    def __init__(self, model_config: ModelConfig, engine_config: EngineConfig, backend: str) -> None:
        self.backend = Backend(backend, batch_invariant=engine_config.batch_invariant)
        if backend == "triton":
            # deferred: looked up at construction (tests patch kernels.runtime)
            from kernels.runtime import default_device

            self.device = default_device()
        else:
            self.device = "cpu"
        self.model_config, self.engine_config = model_config, engine_config
        self.model = Model(model_config, self.backend, self.device)
        shape = (2, engine_config.num_blocks, engine_config.block_size, model_config.num_kv_heads,
                 model_config.head_dim)
        self.debug = False
        self.kv_caches = [torch.full(shape, float("nan"), dtype=TORCH_DTYPES[model_config.dtype], device=self.device)
                          for _ in range(model_config.num_layers)]

    def prepare(self, out: SchedulerOutput, kv: KVCacheManager) -> StepContext:
        if self.debug and out.new_block_ids:
            ids = torch.tensor(out.new_block_ids, dtype=torch.int64, device=self.device)
            for cache in self.kv_caches:
                cache[:, ids] = float("nan")
        tokens, starts, blocks, sampling = [], [], [], []
        for req, n in out.scheduled:
            c = req.num_computed_tokens
            tokens.append(req.all_token_ids[c:c + n])
            starts.append(c)
            blocks.append(kv.block_ids(req))
            sampling.append(c + n == req.num_tokens)
        return StepContext.build(tokens, starts, blocks, sampling, self.engine_config.block_size, self.device)

    @torch.inference_mode()
    def execute(self, ctx: StepContext) -> torch.Tensor:
        return self.model.forward(ctx, self.kv_caches, check_finite=self.debug)
