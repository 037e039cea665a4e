"""The engine's sampler runs on ``top_k_top_p_sample`` with the request's temperature, top-k and top-p and noise
from the request's own generator."""
from __future__ import annotations

import numpy as np
import pytest

from engine.request import Request
from engine.sampler import sample
from engine.sampling_params import SamplingParams
from kernels import reference as R

pytestmark = pytest.mark.host_only("the engine's sampler on the float64 reference sampler: no kernel launch")


def test_top_k_and_top_p_cut_the_engine_distribution():
    logits = np.array([[0.0, np.log(2.0), np.log(5.0), np.log(4.0)]])  # probabilities 1/12, 2/12, 5/12, 4/12
    for params, allowed in ((SamplingParams(temperature=1.0, top_k=1), {2}),
                            (SamplingParams(temperature=1.0, top_k=2), {2, 3}),
                            (SamplingParams(temperature=1.0, top_p=0.5), {2, 3}),
                            (SamplingParams(temperature=1.0, top_p=0.4), {2})):
        req = Request("r", [1], params, generator=np.random.default_rng(3))
        seen = {sample(logits, [req])[0] for _ in range(200)}
        assert seen == allowed, (params, seen)


def test_a_seeded_request_samples_the_race_of_its_own_noise():
    logits = np.random.default_rng(0).standard_normal((1, 50))
    params = SamplingParams(temperature=0.7, top_k=10, top_p=0.9, seed=5)
    got = sample(logits, [Request("r", [1], params, generator=np.random.default_rng(5))])
    noise = np.random.default_rng(5).exponential(size=(1, 50)).astype(np.float32)
    want = R.top_k_top_p_sample(logits.astype(np.float32), temperature=0.7, top_k=10, top_p=0.9, noise=noise)
    assert got == want.tolist()


@pytest.mark.parametrize("bad, name", [(dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                                       (dict(top_k=1.5), "top_k")])
def test_sampling_params_check_top_k_and_top_p(bad, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**bad)
