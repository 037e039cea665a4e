"""Next tokens from logits, and the stop checks that end a request.

Every row goes through ``top_k_top_p_sample`` (the backend's: ``kernels.triton`` or ``kernels.reference``;
the reference by default) with the request's temperature, top-k and top-p and Exp(1) noise drawn from the
request's own generator (one ``[vocab]`` draw per sampled token): greedy (``temperature == 0``) is the argmax,
ties to the lowest id; otherwise the exponential race over the kept tokens. A request's tokens depend only on its
seed and its logits, never on its batch. Non-finite logits raise: they mean a kernel read memory it does not own
(the KV cache starts as NaN).
"""
from __future__ import annotations

import numpy as np

from engine.request import Request, RequestStatus


def sample(logits, requests: list[Request], sampler=None) -> list[int]:
    """One token per row of ``logits [R, vocab]`` (a torch tensor or numpy array) for ``requests[r]``;
    ``sampler``: a ``top_k_top_p_sample`` (default: the float64 reference)."""
    import torch  # deferred: the engine's pure-numpy helpers import without torch

    from kernels import reference

    host = logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    host = np.asarray(host, dtype=np.float64)
    if host.shape[0] != len(requests):
        raise ValueError(f"logits: {host.shape[0]} rows for {len(requests)} requests")
    bad = ~np.isfinite(host).all(axis=1)
    if bad.any():
        r = requests[int(np.nonzero(bad)[0][0])]
        raise FloatingPointError(f"non-finite logits for request {r.request_id!r} ({r!r}): a kernel read "
                                 "memory it does not own, or overflowed")
    if not requests:
        return []
    vocab = host.shape[1]
    noise = np.ones((len(requests), vocab), dtype=np.float32)
    for i, req in enumerate(requests):
        if req.params.temperature > 0:
            noise[i] = np.maximum(req.generator.exponential(size=vocab), 1e-30)
    x = logits if hasattr(logits, "detach") else torch.from_numpy(host.astype(np.float32))
    device = x.device
    params = dict(temperature=torch.tensor([r.params.temperature for r in requests], dtype=torch.float32),
                  top_k=torch.tensor([r.params.top_k for r in requests], dtype=torch.int64),
                  top_p=torch.tensor([r.params.top_p for r in requests], dtype=torch.float32))
    fn = sampler or reference.top_k_top_p_sample
    out = fn(x.float(), **{k: v.to(device) for k, v in params.items()}, noise=torch.from_numpy(noise).to(device))
    return [int(v) for v in np.asarray(out.cpu() if hasattr(out, "cpu") else out)]


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
