"""``top_k_top_p_sample``: the float64 reference's own properties, the implementation under test against it
(exact given the noise; near ties judged by the admissible set), bad input, and the statistical oracle for
samplers with their own randomness (an honest one passes; one that drops its last kept token fails where
flashinfer-bench's total-variation rule passes it; one that over-accepts fails the support check).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T
from kernels import reference as R
from kernels import torch_eager
from kernels.impls import load
from kernels.ops import get
from kernels.reference.sampling import kept_probabilities, kept_sets, sample_admissible
from kernels.testing.judge import judge
from kernels.testing.sampling_stats import (detection_probability, draw_samples, judge_samples, threshold,
                                            tv_rule)
from servekernels.check import run_case, spec_case

SPEC = get("top_k_top_p_sample")
HOST = pytest.mark.host_only("float64 references, eager torch and the statistical oracle: no kernel launch")


def brute_force(logits: np.ndarray, temp, top_k, top_p, noise) -> np.ndarray:
    """The contract's words, one token at a time: sort by decreasing p (ties by lower id), cut at the k-th
    value (ties kept), walk the prefix until its mass reaches top_p of the top-k mass (ties of the last kept),
    race."""
    out = []
    for r in range(logits.shape[0]):
        if temp[r] == 0:
            out.append(int(np.argmax(logits[r])))
            continue
        s = logits[r] / temp[r]
        p = np.exp(s - s.max())
        p /= p.sum()
        order = sorted(range(s.size), key=lambda i: (-s[i], i))
        kk = top_k[r] if 0 < top_k[r] < s.size else s.size
        top = [i for i in order if s[i] >= s[order[kk - 1]]]
        mass, kept = sum(p[i] for i in top), []
        for i in top:
            if sum(p[j] for j in kept) >= top_p[r] * mass and s[i] < s[kept[-1]]:
                break
            kept.append(i)
        kept = [i for i in kept if p[i] > 0]
        out.append(max(kept, key=lambda i: (p[i] / noise[r, i], -i)))
    return np.array(out)


@HOST
def test_reference_reads_like_the_contract():
    rng = np.random.default_rng(0)
    for trial in range(60):
        b, v = 4, int(rng.integers(1, 30))
        x = np.round(rng.standard_normal((b, v)) * 2, 1)  # rounded: ties everywhere
        x[:, rng.integers(0, v, 2)] = -np.inf
        x[:, 0] = np.where(np.isfinite(x).any(1), x[:, 0], 1.0)
        temp = rng.choice([0.0, 0.5, 1.0, 2.0], b)
        top_k, top_p = rng.integers(-1, v + 2, b), rng.choice([0.2, 0.6, 0.9, 1.0], b)
        noise = rng.exponential(size=(b, v))
        got = R.top_k_top_p_sample(x, temperature=temp, top_k=top_k, top_p=top_p, noise=noise)
        np.testing.assert_array_equal(got, brute_force(x, temp, top_k, top_p, noise))


@HOST
def test_reference_properties():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40)) * 3
    soft = np.exp(x - x.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    # top-k with k = V and top-p with p = 1 keep all: the distribution is the softmax
    np.testing.assert_allclose(kept_probabilities(x, temperature=1.0, top_k=40, top_p=1.0), soft, rtol=1e-12)
    # temperature -> 0 approaches the argmax
    q = kept_probabilities(x, temperature=1e-3, top_k=0, top_p=1.0)
    np.testing.assert_allclose(q[np.arange(3), x.argmax(1)], 1.0, atol=1e-9)
    # ties at the top-k boundary are kept: k = 1 over a tied maximum keeps both
    y = np.array([[1.0, 3.0, 0.0, 3.0]])
    assert (kept_probabilities(y, temperature=1.0, top_k=1, top_p=1.0)[0] == [0, 0.5, 0, 0.5]).all()
    # ties at the top-p boundary are kept: p = 0.3 reaches its mass at token 1 and keeps its tie, token 3
    assert (kept_probabilities(y, temperature=1.0, top_k=0, top_p=0.3)[0] == [0, 0.5, 0, 0.5]).all()
    # temperature 0 is the argmax with ties to the lower id, whatever top_k says; -1 for unusable rows
    z = np.array([[1.0, 3.0, 0.0, 3.0], [-np.inf] * 4, [0.0, np.nan, 1.0, 2.0], [0.0, np.inf, 1.0, 2.0]])
    got = R.top_k_top_p_sample(z, temperature=np.array([0.0, 1.0, 1.0, 0.0]), top_k=3, top_p=0.5,
                               noise=np.ones((4, 4)))
    assert got.tolist() == [1, -1, -1, -1]
    # the admissible set holds the reference's token, and a clear row only that
    noise = rng.exponential(size=(3, 40))
    token, adm = sample_admissible(x, temperature=0.7, top_k=10, top_p=0.9, noise=noise)
    assert adm[np.arange(3), token].all() and (adm.sum(1) == 1).all()


@pytest.mark.parametrize("case", [pytest.param("qwen2.5-vocab/sample-k20-p0.8-fp32", marks=pytest.mark.slow),
                                  "gemma3-vocab/sample-p0.9-flat"])
def test_parity_on_check_cases(case, device):
    inputs = SPEC.build(SPEC.check[case], device=device, seed=3)
    token = T.top_k_top_p_sample(*inputs.args, **inputs.kwargs)
    assert token.dtype == torch.int64 and token.shape == (inputs.args[0].shape[0],)
    verdicts = judge(SPEC, lambda *a, **k: token, inputs)
    assert all(v.ok for v in verdicts), [v.detail for v in verdicts if not v.ok]


@pytest.mark.slow
def test_parity_mixed_parameters(device):
    inputs = SPEC.build(SPEC.check["llama3-vocab/sample-mixed-params-masked"], device=device, seed=4)
    verdicts = judge(SPEC, T.top_k_top_p_sample, inputs)
    assert all(v.ok for v in verdicts), [v.detail for v in verdicts if not v.ok]


@pytest.mark.meta_unsupported("the test compares sampled token ids: a meta tensor has no values")
@pytest.mark.servekernels
@pytest.mark.parametrize("top_k, top_p", [(30, 1.0), (0, 0.85)])
def test_slow_path_equals_fast_path(top_k, top_p, device):
    """A candidate set too small for the rows sends them down the bisection-by-passes path: same samples, each
    judged against the reference (row 0's last kept token and row 1's first dropped one hold the planted noise)."""
    from kernels.triton.ops.top_k_top_p_sample import top_k_top_p_sample as kernel

    inputs = SPEC.build(dict(batch=2, vocab=300, dtype="bfloat16", top_k=top_k, top_p=top_p, temperature=0.9),
                        device=device, seed=5)
    fast = kernel(*inputs.args, **inputs.kwargs)
    slow = kernel(*inputs.args, **inputs.kwargs, candidates=16)
    for got in (fast, slow):
        assert all(v.ok for v in judge(SPEC, lambda *a, **k: got, inputs)), (fast, slow)


def test_greedy_ties_and_unusable_rows(device):
    """Temperature 0 over a maximum tied at ids 3 and 1027 (one lane of a 1024-wide step) is 3; all -inf, NaN and
    +inf rows sample -1; a padded row's NaN past the vocabulary is never read."""
    x = torch.full((4, 1100 + 5), float("nan"))
    x[:, :1100] = torch.linspace(-3, 3, 1100)
    x[0, 3] = x[0, 1027] = 9.0
    x[1, :1100] = float("-inf")
    x[2, 17] = float("nan")
    x[3, 40] = float("inf")
    logits = x.to(device)[:, :1100]
    got = T.top_k_top_p_sample(logits, temperature=torch.tensor([0.0, 1.0, 0.0, 1.0], device=device), top_k=5,
                               top_p=0.9, noise=torch.ones(4, 1100, device=device))
    assert got.tolist() == [3, -1, -1, -1]


@pytest.mark.servekernels
@pytest.mark.interpreter("counts the kernel's loads under Triton's interpreter")
def test_reads_of_the_logits_by_path():
    """A flat row (3000 logits of std 0.3, top-p 0.5: about half kept): with room for every candidate, 3 reads
    of the row plus the candidates' gather; with room for 2048, a second pivot pass (4 reads plus the gather);
    both sample what the reference samples."""
    from kernels.triton.ops.top_k_top_p_sample import top_k_top_p_sample as kernel
    from roofline.counting import count_traffic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3000, generator=g) * 0.3
    noise = torch.empty(1, 3000).exponential_(generator=g)
    want = R.top_k_top_p_sample(x, temperature=1.0, top_k=0, top_p=0.5, noise=noise)
    reads = {}
    for cand in (4096, 2048):
        with count_traffic() as counter:
            got = kernel(x, temperature=1.0, top_k=0, top_p=0.5, noise=noise, candidates=cand)
        assert got.tolist() == want.tolist()
        reads[cand] = counter.by_argument("load")["logits_ptr"] / x.numel() / 4
    assert 3.9 < reads[4096] <= 4.0 and 4.4 < reads[2048] <= 5.0, reads


BAD = [  # (what to change, the argument the ValueError must name)
    (dict(logits=torch.zeros(5)), "logits"),
    (dict(logits=torch.zeros(2, 5, dtype=torch.float64)), "logits"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=torch.tensor([1.0, float("nan")])), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=torch.tensor([0.5, 1.5])), "top_p"),
    (dict(top_k=torch.tensor([1.0, 2.0])), "top_k"),
    (dict(top_k=torch.tensor([1, 2, 3])), "top_k"),
    (dict(noise=torch.ones(2, 4)), "noise"),
    (dict(noise=torch.zeros(2, 5)), "noise"),
]


@pytest.mark.parametrize("change, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_names_the_argument(change, name, device):
    kw = dict(logits=torch.zeros(2, 5), temperature=1.0, top_k=0, top_p=0.9, noise=torch.ones(2, 5))
    kw.update(change)
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    logits = kw.pop("logits")
    with pytest.raises(ValueError, match=name):
        T.top_k_top_p_sample(logits, **kw)


# ------------------------------------------------------------------------------ wrong samplers fail check

WRONG = ["sampler_drops_last_kept", "sampler_overaccepts_ties", "sampler_mutates_logits"]


@pytest.mark.host_only("the drop and over-accept modules are numpy/torch; the in-place one runs the kernel on "
                       "default_device() through check itself")
@pytest.mark.parametrize("module", WRONG)
def test_check_fails_a_wrong_sampler(module):
    case = "gemma3-vocab/sample-p0.9-flat"
    results = run_case(spec_case(SPEC, case, SPEC.check[case], load("correctness.wrong_impls." + module)))
    assert any(not r.ok for r in results), f"{module} passed {case}"


# ------------------------------------------------------------------------------- the statistical oracle

def _oracle_rows():
    """Two rows whose last kept token holds >= 1% of the kept mass: top-p 0.9 over a short, steep row, and
    top-k 6 over another; no near tie (the goodness of fit runs on both)."""
    x = torch.tensor([[4.0, 3.2, 2.5, 2.0, 1.1, 0.4, -0.5, -1.0, -2.0, -3.0, -9.0, float("-inf")],
                      [0.5, 2.0, 1.5, -1.0, 3.0, 0.0, 1.0, -2.0, 2.5, -0.5, 0.2, -3.0]])
    params = dict(temperature=torch.tensor([1.0, 0.8]), top_k=torch.tensor([0, 6]), top_p=torch.tensor([0.9, 1.0]))
    q = kept_probabilities(x, **params)
    sure, maybe = kept_sets(x, **params)
    last = [q[r][q[r] > 0].min() for r in range(2)]
    assert min(last) >= 0.01 and (sure == maybe).all()
    return x, params, q, sure, maybe


N_SAMPLES = 2000  # >= 100.5 L: a dropped token of 1% is caught with certainty (L ~ 17 at 14 bins)


@HOST
def test_statistical_oracle_passes_an_honest_sampler_and_fails_a_biased_one():
    from correctness.wrong_impls import sampler_drops_last_kept, sampler_overaccepts_ties

    x, params, q, sure, maybe = _oracle_rows()
    torch.manual_seed(7)
    honest = judge_samples(draw_samples(torch_eager.top_k_top_p_sample, x, N_SAMPLES, **params), q, sure, maybe)
    assert honest.ok, honest.detail
    assert honest.tested_rows == 2 and honest.alpha == 1e-6
    # dropping a token of mass >= 1% is caught with certainty at this N: the count is 0 and N * -log(1 - 0.01)
    # passes the level
    assert N_SAMPLES * -np.log(1 - 0.01) >= honest.level
    biased = draw_samples(sampler_drops_last_kept.top_k_top_p_sample, x, N_SAMPLES, **params)
    verdict = judge_samples(biased, q, sure, maybe)
    assert not verdict.ok and verdict.outside == 0 and "drawn 0 times" in verdict.detail
    passes, tv = tv_rule(biased, q)
    assert passes, tv  # flashinfer-bench's rule (TV <= 0.2) passes the same draws
    over = judge_samples(draw_samples(sampler_overaccepts_ties.top_k_top_p_sample, x, N_SAMPLES, **params),
                         q, sure, maybe)
    assert not over.ok and over.outside > 0


@HOST
def test_false_alarm_and_power_are_computed():
    level = threshold(30)
    assert np.isclose(level, np.log(60 / 1e-6))
    # the two tails of one bin under H0, summed exactly, stay under exp(-L) each
    for q_bin in (0.01, 0.2, 0.6):
        assert detection_probability(q_bin, q_bin, N_SAMPLES, level) <= 2 * np.exp(-level)
    # power: certain against a dropped token of 1%; near-certain against a token that lost half of 10%; weak
    # against small partial losses at this N (0.03 -> 0.02: a few percent), as the bound says
    assert detection_probability(0.01, 0.0, N_SAMPLES, level) == 1.0
    assert detection_probability(0.10, 0.05, N_SAMPLES, level) > 0.99
    assert detection_probability(0.03, 0.02, N_SAMPLES, level) < 0.5


@pytest.mark.slow
@pytest.mark.servekernels
def test_our_kernel_passes_the_statistical_oracle(device):
    """The kernel drawing its own noise (Philox in the kernel), 300 samples a row: the interpreter runs a program
    a sample (160 s at 600 here), so this run's power is lower than the default-tier pair's (it still fails a
    dropped token of >= 6% mass with certainty: 300 * -log(0.94) > L)."""
    x, params, q, sure, maybe = _oracle_rows()
    params = {k: v.to(device) for k, v in params.items()}
    samples = draw_samples(T.top_k_top_p_sample, x.to(device), 300, **params)
    fit = judge_samples(samples, q, sure, maybe)
    assert fit.ok, fit.detail
