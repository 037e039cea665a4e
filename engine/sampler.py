"""Next tokens from logits, and the stop checks that end a request.

Greedy (``temperature == 0``) takes the argmax, ties to the lowest id. Temperature sampling draws one uniform
number from the request's own generator per token and inverts the CDF of ``softmax(logits / T)`` in float64:
a request's tokens depend only on its seed and its logits, never on its batch. Non-finite logits raise: they
mean a kernel read memory it does not own (the KV cache starts as NaN).
"""
from __future__ import annotations

import numpy as np

from engine.request import Request, RequestStatus


def sample(logits, requests: list[Request]) -> list[int]:
    """One token per row of ``logits [R, vocab]`` (a torch tensor or numpy array) for ``requests[r]``."""
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[0] != len(requests):
        raise ValueError(f"logits: {logits.shape[0]} rows for {len(requests)} requests")
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        r = requests[int(np.nonzero(bad)[0][0])]
        raise FloatingPointError(f"non-finite logits for request {r.request_id!r} ({r!r}): a kernel read "
                                 "memory it does not own, or overflowed")
    out = logits.argmax(axis=1).tolist()
    for i, req in enumerate(requests):
        t = req.params.temperature
        if t > 0:
            z = logits[i] / t
            p = np.exp(z - z.max())
            cdf = np.cumsum(p)
            u = req.generator.random() * cdf[-1]
            out[i] = int(min(np.searchsorted(cdf, u, side="right"), len(cdf) - 1))
    return out


def chosen_logprobs(logits, tokens: list[int]) -> np.ndarray:
    """float32 ``[R]``: the natural-log probability of ``tokens[r]`` under ``softmax(logits[r])`` (the model's
    distribution, before any temperature), computed in float64 from the logits."""
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return (z[np.arange(len(tokens)), tokens] - lse).astype(np.float32)


def check_stop(request: Request, max_model_len: int) -> RequestStatus | None:
    """The finished status after the request's newest token, or None. Order (vLLM's): length (``max_tokens``
    or ``max_model_len``) first, then EOS unless ``ignore_eos``, then ``stop_token_ids``."""
    params = request.params
    if request.num_output_tokens >= params.max_tokens or request.num_tokens >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    last = request.all_token_ids[-1]
    if not params.ignore_eos and last == request.eos_token_id:
        return RequestStatus.FINISHED_STOPPED
    if last in params.stop_token_ids:
        return RequestStatus.FINISHED_STOPPED
    return None
