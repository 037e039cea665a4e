"""How one request samples and when it stops."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy (ties go to the lowest token id); ``temperature > 0`` samples from
    ``softmax(logits / temperature)`` cut by ``top_k`` and ``top_p`` (``top_k_top_p_sample``) with the request's own
    generator, seeded by ``seed`` (or drawn from the
    engine's seed when None), so a request's tokens never depend on what else is in the batch.

    Stop checks run after every new token, in this order (vLLM's): ``max_tokens`` reached -> "length"; the
    EOS token (unless ``ignore_eos``) -> "stop"; a token in ``stop_token_ids`` -> "stop". The stopping token is
    kept in ``output_token_ids``.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    top_k: int = 0  # <= 0: off (top_k_top_p_sample's meaning)
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an int >= 1, got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature: must be finite and >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError(f"top_k: must be an int (<= 0: off), got {self.top_k!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed: must be None or an int >= 0, got {self.seed!r}")
        ids = tuple(self.stop_token_ids)
        if any(not isinstance(t, int) or t < 0 for t in ids):
            raise ValueError(f"stop_token_ids: must be non-negative ints, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop_token_ids", ids)
