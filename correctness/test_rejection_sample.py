"""``rejection_sample``: the reference's own properties, the implementation under test against it on
the check cases (exact up to a flippable decision), bad input, a sampler that accepts at a uniform of 0 failing
check, and the algorithm's guarantee: the first emitted token is distributed as the target, whatever the draft
(the statistical oracle at a computed 1e-6 false alarm)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from correctness.impl import T
from kernels import reference as R
from kernels import torch_eager
from kernels.impls import load
from kernels.ops import get
from kernels.testing.judge import judge
from kernels.testing.sampling_stats import judge_samples
from servekernels.check import run_case, spec_case

SPEC = get("rejection_sample")
HOST = pytest.mark.host_only("float64 references and eager torch: no kernel launch")


@HOST
def test_reference_properties():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=4)
    ids = np.array([1, 2, 3, 0])
    kw = dict(uniforms=np.full(4, 0.999), recovery_noise=rng.exponential(size=(4, 6)), num_draft_tokens=[3, 1])
    # a draft equal to the target is always accepted: every request ends with its bonus token
    out = R.rejection_sample(ids, p, p, np.array([5, 4]), **kw)
    assert out.tolist() == [[1, 2, 3, 5], [0, 4, -1, -1]]
    # a deterministic draft against constant noise is accepted while it is the target's argmax
    top = p.argmax(1)
    ids2 = np.array([top[0], top[1], (top[2] + 1) % 6, top[3]])
    out = R.rejection_sample(ids2, None, p, np.array([5, 4]), **dict(kw, recovery_noise=np.ones((4, 6))))
    assert out.tolist() == [[top[0], top[1], top[2], -1], [top[3], 4, -1, -1]]
    # a token the target rules out is rejected even at a uniform of 0; the residual's argmax is emitted
    q = p.copy()
    q[0, 1] = 0.0
    q /= q.sum(1, keepdims=True)
    out = R.rejection_sample(ids[:1], p[:1], q[:1], np.array([5]), uniforms=np.zeros(1),
                             recovery_noise=np.ones((1, 6)), num_draft_tokens=[1])
    assert out[0, 0] == np.argmax(np.maximum(q[0] - p[0], 0)) and out[0, 1] == -1


@pytest.mark.parametrize("case", sorted(SPEC.check))
def test_parity_on_check_cases(case, device):
    inputs = SPEC.build(SPEC.check[case], device=device, seed=2)
    out = T.rejection_sample(*inputs.args, **inputs.kwargs)
    counts = inputs.kwargs["num_draft_tokens"]
    assert out.dtype == torch.int64 and out.shape == (len(counts), max(counts) + 1)
    verdicts = judge(SPEC, lambda *a, **k: out, inputs)
    assert all(v.ok for v in verdicts), [v.detail for v in verdicts if not v.ok]


BAD = [
    (dict(num_draft_tokens=[2, 3]), "target_probs"),
    (dict(uniforms=torch.full((4,), 1.0)), "uniforms"),
    (dict(recovery_noise=torch.zeros(4, 8)), "recovery_noise"),
    (dict(draft_token_ids=torch.tensor([0, 1, 9, 2])), "draft_token_ids"),
    (dict(bonus_token_ids=torch.tensor([0, 1, 2])), "bonus_token_ids"),
    (dict(draft_probs=torch.ones(4, 7)), "draft_probs"),
    (dict(num_draft_tokens=[3, -1, 2]), "num_draft_tokens"),
]


@pytest.mark.parametrize("change, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_names_the_argument(change, name, device):
    kw = dict(draft_token_ids=torch.tensor([0, 1, 2, 3]), draft_probs=torch.full((4, 8), 0.125),
              target_probs=torch.full((4, 8), 0.125), bonus_token_ids=torch.tensor([1, 2]),
              uniforms=torch.full((4,), 0.5), recovery_noise=torch.ones(4, 8), num_draft_tokens=[1, 3])
    kw.update(change)
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    args = [kw.pop(k) for k in ("draft_token_ids", "draft_probs", "target_probs", "bonus_token_ids")]
    with pytest.raises(ValueError, match=name):
        T.rejection_sample(*args, **kw)


@pytest.mark.host_only("a numpy/torch module judged by check on default_device() itself")
def test_check_fails_a_sampler_accepting_at_zero():
    case = "llama3-vocab/rejection-draft-probs"
    results = run_case(spec_case(SPEC, case, SPEC.check[case], load("correctness.wrong_impls.rejection_accepts_at_zero")))
    assert any(not r.ok for r in results)


def _guarantee_inputs(num: int, deterministic: bool, seed: int):
    """``num`` one-draft requests sharing a target and a draft far from it; draft tokens drawn from the draft
    (or a fixed token for a deterministic draft), fresh uniforms and Exp(1) noise each."""
    rng = np.random.default_rng(seed)
    target = np.array([0.30, 0.25, 0.15, 0.12, 0.08, 0.05, 0.03, 0.02])
    draft = np.array([0.02, 0.05, 0.10, 0.03, 0.40, 0.10, 0.20, 0.10])
    ids = np.full(num, 4) if deterministic else rng.choice(8, num, p=draft)
    args = (torch.from_numpy(ids), None if deterministic else torch.from_numpy(np.tile(draft, (num, 1))).float(),
            torch.from_numpy(np.tile(target, (num, 1))).float(), torch.zeros(num, dtype=torch.int64))
    kwargs = dict(uniforms=torch.from_numpy(rng.random(num)).float(),
                  recovery_noise=torch.from_numpy(rng.exponential(size=(num, 8))).float(), num_draft_tokens=[1] * num)
    q = torch.tensor(target).float().double().numpy()
    return args, kwargs, q / q.sum()


@HOST
@pytest.mark.parametrize("impl", ["reference", "torch"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["draft-probs", "deterministic-draft"])
def test_emitted_tokens_follow_the_target(impl, deterministic):
    fn = R.rejection_sample if impl == "reference" else torch_eager.rejection_sample
    args, kwargs, q = _guarantee_inputs(3000, deterministic, seed=11 + deterministic)
    first = np.asarray(fn(*args, **kwargs))[:, 0]
    fit = judge_samples(first[None, :], q[None, :], np.ones((1, 8), bool), np.ones((1, 8), bool))
    assert fit.ok and fit.tested_rows == 1, fit.detail
    # the draft is far from the target: the draft's own distribution fails the same test (the test has power)
    draft = np.array([0.02, 0.05, 0.10, 0.03, 0.40, 0.10, 0.20, 0.10])
    assert not judge_samples(first[None, :], draft[None, :], np.ones((1, 8), bool), np.ones((1, 8), bool)).ok


@pytest.mark.slow
@pytest.mark.servekernels
def test_our_kernel_emits_tokens_following_the_target(device):
    args, kwargs, q = _guarantee_inputs(600, False, seed=13)
    args = tuple(a.to(device) if a is not None else None for a in args)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    first = T.rejection_sample(*args, **kwargs).cpu().numpy()[:, 0]
    fit = judge_samples(first[None, :], q[None, :], np.ones((1, 8), bool), np.ones((1, 8), bool))
    assert fit.ok, fit.detail
