"""Inputs for grouped GEMMs and MoE that look like real routing, not like a balanced toy.

- Routing is SKEWED by default: one hot expert takes about half the rows, some experts get none, some get
  exactly one row, the rest share what is left unevenly (``skewed_group_sizes``, ``skewed_router_logits``).
- Activations and weights are signed Gaussians (cancellations happen), with a few outlier input channels
  (x8) so per-group / per-block quantization scales differ from group to group.
- Everything is seeded; tensors are created on the CPU and moved to ``device``, except master weight stacks
  past ``DEVICE_RNG_MIN_ELEMENTS`` (full-size report cases only), drawn on ``device`` (``master_weights``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kernels.reference.routing import route
from kernels.testing.paged import torch_dtype

OUTLIER_GAIN = 8.0  # activation outlier channels (as in real LLM activations)
WEIGHT_OUTLIER_GAIN = 3.0  # weight outliers are milder; enough to make group / block scales differ


def skewed_group_sizes(num_rows: int, num_experts: int, rng: np.random.Generator, *,
                       hot_fraction: float = 0.5) -> np.ndarray:
    """Rows per expert summing to ``num_rows``: expert order shuffled; one hot expert (~hot_fraction of the
    rows), about a quarter empty, up to a quarter with exactly one row, the rest random (Dirichlet) shares."""
    sizes = np.zeros(num_experts, dtype=np.int64)
    if num_rows == 0:
        return sizes
    order = rng.permutation(num_experts)
    hot, rest = order[0], order[1:]
    n_empty = (len(rest) + 2) // 4
    n_single = min((len(rest) + 1) // 4, num_rows // 4)
    singles = rest[n_empty:n_empty + n_single]
    shared = rest[n_empty + n_single:]
    sizes[singles] = 1
    left = num_rows - n_single
    sizes[hot] = int(round(left * hot_fraction)) if len(shared) else left
    left -= sizes[hot]
    if len(shared):
        share = rng.dirichlet(np.full(len(shared), 0.5))
        counts = np.floor(share * left).astype(np.int64)
        counts[rng.integers(len(shared))] += left - counts.sum()
        sizes[shared] = counts
    assert sizes.sum() == num_rows
    return sizes


def offsets_from_sizes(sizes, device="cpu", dtype=torch.int32) -> torch.Tensor:
    """``[E + 1]`` prefix sums (``group_offsets``) of rows per expert."""
    offs = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    return torch.tensor(offs, dtype=dtype, device=device)


def signed_activations(num_rows: int, k: int, rng: np.random.Generator, *, outlier_channels: int = 3) -> np.ndarray:
    """float64 ``[T, K]`` standard Gaussians with a few input channels scaled by OUTLIER_GAIN."""
    a = rng.standard_normal((num_rows, k))
    if k and outlier_channels:
        a[:, rng.choice(k, size=min(outlier_channels, k), replace=False)] *= OUTLIER_GAIN
    return a


def signed_weights(num_experts: int, n: int, k: int, rng: np.random.Generator, *,
                   outlier_channels: int = 3) -> np.ndarray:
    """float64 ``[E, N, K]`` Gaussians of std ``K**-0.5`` (outputs O(1)); per expert, a few input channels are
    scaled by WEIGHT_OUTLIER_GAIN and each output row gets its own gain in [0.5, 2] so channel scales differ."""
    w = rng.standard_normal((num_experts, n, k)) * max(k, 1) ** -0.5
    w *= rng.uniform(0.5, 2.0, size=(num_experts, n, 1))
    if k and outlier_channels:
        for e in range(num_experts):
            w[e][:, rng.choice(k, size=min(outlier_channels, k), replace=False)] *= WEIGHT_OUTLIER_GAIN
    return w



DEVICE_RNG_MIN_ELEMENTS = 2**26  # larger stacks (the report's full-size Mixtral/Qwen experts) are drawn on the device


def master_weights(num_experts: int, n: int, k: int, rng: np.random.Generator, device="cpu") -> torch.Tensor:
    """float32 ``[E, N, K]`` master weights on ``device``, distributed as ``signed_weights``.

    Up to ``DEVICE_RNG_MIN_ELEMENTS`` elements (every parity and check shape): ``signed_weights`` (numpy, the same
    values on every machine). Above it (only full-size report cases: a Mixtral w13 is 940 M elements, 40 s of
    single-threaded numpy here): drawn by torch on ``device`` from a generator seeded by ``rng``, one expert at a
    time, float32 throughout. Same distribution, different values per device kind; each case's reference and
    tolerance are computed from the very tensors the kernel gets, so parity does not depend on which."""
    if num_experts * n * k <= DEVICE_RNG_MIN_ELEMENTS:
        return torch.from_numpy(signed_weights(num_experts, n, k, rng)).to(torch.float32).to(device)
    if torch.device(device).type == "meta":  # shapes only: there are no values to draw
        return torch.empty((num_experts, n, k), dtype=torch.float32, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(rng.integers(2**62)))
    w = torch.empty((num_experts, n, k), dtype=torch.float32, device=device)
    for e in range(num_experts):
        w_e = w[e]
        w_e.normal_(0.0, max(k, 1) ** -0.5, generator=gen)
        w_e *= torch.empty((n, 1), device=device).uniform_(0.5, 2.0, generator=gen)
        cols = torch.randperm(k, generator=gen, device=device)[:3]
        w_e[:, cols] *= WEIGHT_OUTLIER_GAIN
    return w


@dataclass
class GroupedGemmInputs:
    a: torch.Tensor  # [T, K] in the activation dtype
    w: torch.Tensor  # [E, N, K] float32 master weights (quantize these, or cast for the dense GEMM)
    group_offsets: torch.Tensor  # [E + 1] int32
    sizes: np.ndarray  # rows per expert

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, E, N, K)."""
        return int(self.a.shape[0]), int(self.w.shape[0]), int(self.w.shape[1]), int(self.w.shape[2])


def make_grouped_gemm_inputs(num_rows: int, num_experts: int, n: int, k: int, dtype="bfloat16", *, seed: int = 0,
                             device="cpu", sizes=None, weights_device=None) -> GroupedGemmInputs:
    """Skewed routing (unless ``sizes`` is given), signed activations in ``dtype``, float32 master weights (on
    ``weights_device`` if given, else ``device``)."""
    rng = np.random.default_rng(seed)
    sizes = skewed_group_sizes(num_rows, num_experts, rng) if sizes is None else np.asarray(sizes, dtype=np.int64)
    if sizes.sum() != num_rows or len(sizes) != num_experts:
        raise ValueError(f"sizes: {sizes.tolist()} must have {num_experts} entries summing to {num_rows}")
    a = torch.from_numpy(signed_activations(num_rows, k, rng)).to(torch_dtype(dtype)).to(device)
    w = master_weights(num_experts, n, k, rng, weights_device or device)
    return GroupedGemmInputs(a, w, offsets_from_sizes(sizes, device), sizes)


def skewed_router_logits(num_tokens: int, num_experts: int, rng: np.random.Generator, *, hot_bias: float = 3.0,
                         cold_fraction: float = 0.25) -> np.ndarray:
    """float64 ``[T, E]`` router logits: a hot expert (+hot_bias), about ``cold_fraction`` of the experts
    pushed far down (-30: never in any top-k unless k forces it), the rest Gaussian; a few exact ties."""
    logits = rng.standard_normal((num_tokens, num_experts))
    order = rng.permutation(num_experts)
    logits[:, order[0]] += hot_bias
    n_cold = int(num_experts * cold_fraction)
    if n_cold:
        logits[:, order[num_experts - n_cold:]] -= 30.0
    if num_tokens and num_experts > 2:
        logits[0, order[1]] = logits[0, order[2]]  # a tie: the lower expert id must win
    return logits


def launch_routing(device, tokens: int = 7, experts: int = 6, top_k: int = 2):
    """The launch-path tests' routing: ``(router logits float32, topk_ids, topk_weights float32)`` of a skewed
    router, routed by the reference."""
    logits = skewed_router_logits(tokens, experts, np.random.default_rng(7))
    ids, weights = route(logits, top_k)
    return (torch.from_numpy(logits).to(device, torch.float32), torch.from_numpy(ids).to(device),
            torch.from_numpy(weights).to(device, torch.float32))
