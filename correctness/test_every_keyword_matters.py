"""Every keyword of every op changes its output where it should, and some check case proves it.

Each op spec classifies every keyword-only argument of its reference (``OpSpec.keywords``): "" for one that
changes the output (scale, window, soft-cap, cache scales, out_dtype), otherwise why it cannot (partitioning
hints the contract says must not change the output, output selection, the invariant mode). For each of the
first kind, an implementation that silently ignores the keyword (this project's kernel with the keyword dropped;
a required keyword, which a call cannot drop, fixed at the zero of its type: eps 0, ``is_neox=False``; a keyword's
partners, ``OpSpec.partners``, dropped with it: ``topk_groups`` means nothing without ``num_groups``) must FAIL
the cheapest check case that sets it, and the kernel itself must pass that case: a keyword no case exercises, or a case whose output does not move when the keyword is ignored, fails here (issue 11, hole 2: the
prefill kernel once ignored ``k_scale``/``v_scale`` on a non-fp8 cache and no test looked).
"""
from __future__ import annotations

import functools
import inspect

import pytest

from kernels.impls import load
from kernels.ops import get, registry
from kernels.testing.judge import expected_outputs, judge


@pytest.mark.host_only("signatures and the op specs only")
@pytest.mark.parametrize("op", list(registry()))
def test_every_keyword_is_classified(op):
    spec = get(op)
    params = inspect.signature(spec.reference_fn()).parameters.values()
    keywords = {p.name for p in params if p.kind == p.KEYWORD_ONLY}
    assert keywords == set(spec.keywords), (f"{op}: keywords of the reference not classified in its spec: "
                                            f"{sorted(keywords - set(spec.keywords))}; classified but gone: "
                                            f"{sorted(set(spec.keywords) - keywords)}")


@functools.cache
def _built(op: str, case: str, device: str):
    """A check case's inputs, the reference's outputs on them and the kernel's verdicts (each computed once)."""
    spec = get(op)
    inputs = spec.build(spec.check[case], device, seed=len(case))
    expected = expected_outputs(spec, inputs)
    return inputs, expected, judge(spec, load("servekernels").op(op), inputs, expected=expected)


def _required(op: str, keyword: str) -> bool:
    """A keyword without a default (``eps``, ``is_neox``): a call cannot leave it out."""
    return inspect.signature(get(op).reference_fn()).parameters[keyword].default is inspect.Parameter.empty


def _ignored_value(value):
    """What an implementation that ignores a required keyword computes with: the zero of its type (eps 0, a fixed
    layout ``is_neox=False``; a tensor of zeros: uniforms 0, no draft tokens)."""
    if hasattr(value, "detach"):
        import torch

        return torch.zeros_like(value)
    return type(value)()


def _case_for(op: str, keyword: str):
    """The smallest check case of ``op`` whose shape sets ``keyword`` (by its shape: nothing is built), a required
    keyword to something other than ``_ignored_value``; or None."""
    spec = get(op)
    sets = [name for name, shape in spec.check.items() if keyword in shape
            and not (_required(op, keyword) and shape[keyword] == _ignored_value(shape[keyword]))]
    if not sets:  # a keyword no shape names (a bias a weight format brings, a tensor input): the calls that pass it
        sets = [name for name in spec.check if keyword in _built(op, name, "cpu")[0].kwargs]
    return min(sets, key=lambda n: len(repr(spec.check[n]))) if sets else None


SEMANTIC = [(op, k) for op, spec in registry().items() for k, why in spec.keywords.items() if not why]


@pytest.mark.meta_unsupported("the reference's outputs come first (they judge both calls); these check cases reach "
                               "their first launch on meta in test_check_cli.py")
@pytest.mark.slow
@pytest.mark.parametrize("op, keyword", SEMANTIC)
def test_ignoring_a_keyword_fails_a_check_case(op, keyword, device):
    case = _case_for(op, keyword)
    assert case, f"{op}: no check case sets {keyword!r}; add one to kernels/ops/{op}.py"
    inputs, expected, kernel_verdicts = _built(op, case, device)
    assert keyword in inputs.kwargs, f"{op}/{case}: the shape names {keyword!r} but the call does not pass it"
    spec = get(op)
    kernel = load("servekernels").op(op)
    assert all(v.ok for v in kernel_verdicts), f"{op}/{case}: the kernel itself fails the case"

    def ignores(*args, **kwargs):
        value = kwargs.pop(keyword)
        if _required(op, keyword):  # it cannot be left out: the ignoring kernel computes with a fixed value
            kwargs[keyword] = _ignored_value(value)
        for key in spec.partners.get(keyword, ()):  # the keywords meaningless without it go with it
            kwargs.pop(key, None)
        return kernel(*args, **kwargs)

    verdicts = judge(spec, ignores, inputs, expected=expected)
    assert any(not v.ok for v in verdicts), (f"{op}/{case}: ignoring {keyword}={inputs.kwargs[keyword]!r} still "
                                             f"passes: {[(v.output, v.max_abs_err, v.atol) for v in verdicts]}")
