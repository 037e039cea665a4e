"""FlashInfer's ``chain_speculative_sampling`` template <-> ``rejection_sample``, judged statistically.

Theirs (the API): ``draft_probs [B, S, V]``, ``draft_token_ids [B, S]`` int32, ``target_probs [B, S + 1, V]``;
output ``accepted_token_ids [B, S + 1]`` int32: draft token i is accepted with probability ``min(1, t_i / d_i)``
(its target and draft probabilities), the first rejection emits a draw of the normalised residual
``max(0, target - draft)`` and ends the row (-1 after), all accepted appends a draw of ``target_probs[:, S]``. The
sampler owns its randomness. The contract's ``rejection_sample`` has the same acceptance and recovery (in law: its
``uniforms`` and ``recovery_noise`` are the randomness), a target that rules a token out never accepts it, and takes
the bonus token as an input instead of a row of target probabilities; draft counts may be ragged.

Mapping rules:

- theirs -> contract (``inputs_from``): requests one after another, ``draft_token_ids`` flattened, the first S
  target rows each; ``target_probs[:, S]`` is kept beside (``Inputs.data["bonus_probs"]``) and a bonus token drawn
  from it; ``uniforms`` / ``recovery_noise`` fresh draws (a call of the contract is then one draw of theirs);
- contract -> theirs (``implementation``): equal draft counts only (else ``Unsupported``), the bonus row one-hot at
  ``bonus_token_ids`` (so their bonus draw is the given token; a Solution drawing the bonus from a wrong row emits
  another token and fails, one drawing it wrongly from the right row is not caught: the contract fixes the bonus).

The judge (``evaluate``): the exact law of a request's outcome (first rejected position i and its token, or all
accepted and the bonus) is ``prod_{j<i} a_j (1 - a_i) r_i(tok)``, ``prod_j a_j b(tok)``; ``N`` draws of every request
(repeated, with fresh bonus tokens from ``bonus_probs``), each row checked for its shape (the accepted drafts, one
token, then -1: anything else is outside the support), then the goodness of fit of ``kernels.testing.sampling_stats``
over the ``(S + 1) V`` outcomes. The template's own reference is deterministic (accept iff ``t >= d``, argmax
recovery and bonus): neither the API's law nor ours (test_trace_sampling.py).
"""
from __future__ import annotations

import re

import numpy as np

from kernels.ops import Inputs
from servekernels.trace.families._base import Family, dtype_name, is_tensor
from servekernels.trace.schema import Axis, Definition, TensorSpec

_NAME = re.compile(r"^chain_speculative_sampling(_v(\d+))?(_[a-z0-9_]+)?$")
_NEED = ("draft_probs", "draft_token_ids", "target_probs")
SAMPLES = 2000
CHUNK_ELEMENTS = 1 << 23

_REF = '''import torch


@torch.no_grad()
def run(draft_probs, draft_token_ids, target_probs):
    # accept draft token i with probability min(1, target / draft) at it (never where target is 0); the first
    # rejection emits a draw of the normalised max(0, target - draft) and ends the row; all accepted: a draw of
    # the last target row; -1 after the emitted token
    d = draft_probs.to(torch.float64)
    t = target_probs.to(torch.float64)
    batch, spec = draft_token_ids.shape
    out = torch.full((batch, spec + 1), -1, dtype=torch.int32, device=draft_token_ids.device)
    for b in range(batch):
        for i in range(spec + 1):
            if i == spec:
                out[b, i] = int(torch.multinomial(t[b, i], 1))
                break
            tok = int(draft_token_ids[b, i])
            if t[b, i, tok] > 0 and float(torch.rand(())) * d[b, i, tok] <= t[b, i, tok]:
                out[b, i] = tok
                continue
            residual = torch.clamp(t[b, i] - d[b, i], min=0.0)
            out[b, i] = int(torch.multinomial(residual if residual.sum() > 0 else t[b, i], 1))
            break
    return out
'''


def outcome_law(draft, target, ids, bonus) -> np.ndarray:
    """float64 ``[B, (S + 1) V]``: the law of (first rejected position i, emitted token) at ``i V + token``, all
    accepted at ``S V + token`` (the bonus law ``bonus [B, V]``); ``draft``/``target`` ``[B, S, V]``."""
    batch, spec, vocab = draft.shape
    law = np.zeros((batch, (spec + 1) * vocab))
    for b in range(batch):
        reach = 1.0
        for i in range(spec):
            t, d = target[b, i], draft[b, i]
            tok = int(ids[b, i])
            a = 0.0 if t[tok] <= 0 else (1.0 if d[tok] <= t[tok] else t[tok] / d[tok])
            residual = np.maximum(t - d, 0.0)
            residual = residual / residual.sum() if residual.sum() > 0 else t / t.sum()
            law[b, i * vocab:(i + 1) * vocab] += reach * (1 - a) * residual
            reach *= a
        law[b, spec * vocab:] += reach * bonus[b] / bonus[b].sum()
    return law


def encode(out: np.ndarray, ids: np.ndarray, bonus: np.ndarray, vocab: int) -> np.ndarray:
    """Each output row ``[S + 1]`` as its outcome index ``i V + token`` (``ids [S]`` the request's drafts,
    ``bonus`` the bonus token each draw was handed), or -1 when the row is not accepted drafts, one token, -1s."""
    spec = ids.size
    codes = np.full(out.shape[0], -1, dtype=np.int64)
    for n, row in enumerate(out):
        i = 0
        while i < spec and row[i] == ids[i]:
            i += 1
        tok = int(row[i]) if i <= spec else -1
        if i == spec and tok != int(bonus[n]):
            continue
        if 0 <= tok < vocab and (row[i + 1:] == -1).all():
            codes[n] = i * vocab + tok
    return codes


class ChainSpeculativeSampling(Family):
    """FlashInfer's ``chain_speculative_sampling`` template <-> ``rejection_sample`` (with draft probabilities)."""

    name = "chain_speculative_sampling"
    op = "rejection_sample"
    draws = True
    published = ("chain_speculative_sampling",)

    def covers(self, definition):
        return bool(_NAME.match(definition.name))

    def why_not(self, definition):
        missing = [n for n in _NEED if n not in definition.inputs]
        if missing:
            return f"inputs {missing} missing (this adapter maps draft_probs, draft_token_ids, target_probs)"
        unknown = [n for n, s in definition.inputs.items() if n not in _NEED and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the rejection_sample contract"
        if len(definition.outputs) != 1:
            return f"outputs {sorted(definition.outputs)}: one output of accepted token ids expected"
        return ""

    def _plain(self, inputs):
        kw = inputs.kwargs
        counts = list(np.asarray(kw["num_draft_tokens"]).reshape(-1))
        return inputs.args[1] is not None and len(set(counts)) == 1 and counts[0] > 0

    def definition(self, vocab: int, dtype: str = "float32") -> Definition:
        axes = {"batch_size": Axis("var"), "num_speculative": Axis("var", description="Draft tokens per step."),
                "num_speculative_plus_1": Axis("var", description="num_speculative + 1 (target/output axis)."),
                "vocab_size": Axis("const", vocab)}
        ins = {"draft_probs": TensorSpec(["batch_size", "num_speculative", "vocab_size"], dtype),
               "draft_token_ids": TensorSpec(["batch_size", "num_speculative"], "int32"),
               "target_probs": TensorSpec(["batch_size", "num_speculative_plus_1", "vocab_size"], dtype)}
        outs = {"accepted_token_ids": TensorSpec(["batch_size", "num_speculative_plus_1"], "int32")}
        return Definition(f"chain_speculative_sampling_v{vocab}", "sampling", axes, ins, outs, _REF,
                          tags=["status:verified", "speculative", "servekernels", f"servekernels:op={self.op}"],
                          description="Chain speculative sampling (FlashInfer's chain_speculative_sampling): accept "
                                      "with probability min(1, target / draft), recover from the residual, a bonus "
                                      "draw of the last target row; the sampler draws its own randomness.",
                          constraints=["num_speculative_plus_1 == num_speculative + 1"])

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        return self.definition(int(inputs.args[2].shape[1]), dtype_name(inputs.args[2]))

    def named(self, definition, inputs):
        a, kw = inputs.args, inputs.kwargs
        return self._named(definition, a[0], a[1], a[2], a[3], kw["num_draft_tokens"])

    def _named(self, definition, ids, draft, target, bonus, counts) -> dict:
        import torch

        from kernels.ops import Unsupported

        counts = [int(c) for c in np.asarray(counts).reshape(-1)]
        if draft is None:
            raise Unsupported(f"deterministic_draft: {definition.name} takes draft probabilities")
        if len(set(counts)) != 1 or counts[0] == 0:
            raise Unsupported(f"ragged: {definition.name} has one draft count for every request, got {counts}")
        batch, spec, vocab = len(counts), counts[0], int(target.shape[1])
        onehot = torch.zeros(batch, 1, vocab, dtype=target.dtype, device=target.device)
        onehot.scatter_(2, bonus.reshape(batch, 1, 1).long(), 1.0)
        return {"draft_probs": draft.reshape(batch, spec, vocab),
                "draft_token_ids": ids.reshape(batch, spec).to(torch.int32),
                "target_probs": torch.cat([target.reshape(batch, spec, vocab), onehot], dim=1)}

    def implementation(self, definition, solve):
        fam = self
        out = next(iter(definition.outputs))

        def impl(draft_token_ids, draft_probs, target_probs, bonus_token_ids, *, uniforms, recovery_noise,
                 num_draft_tokens, validate=True):
            # uniforms and recovery_noise are not passed on: the Solution draws its own randomness
            return solve(fam._named(definition, draft_token_ids, draft_probs, target_probs, bonus_token_ids,
                                    num_draft_tokens))[out]

        return impl

    def theirs(self, definition, outputs):
        import torch

        return {next(iter(definition.outputs)): outputs["output_token_ids"].to(torch.int32)}

    def inputs_from(self, definition, named):
        import torch

        draft, target = named["draft_probs"], named["target_probs"]
        ids = named["draft_token_ids"]
        batch, spec, vocab = (int(s) for s in draft.shape)
        if tuple(target.shape) != (batch, spec + 1, vocab):
            raise ValueError(f"target_probs: must be [{batch}, {spec + 1}, {vocab}], got {tuple(target.shape)}")
        for n, x in (("draft_probs", draft), ("target_probs", target)):
            x64 = x.detach().double()
            if not bool(torch.isfinite(x64).all()) or bool((x64 < 0).any()) or not bool((x64.sum(-1) > 0).all()):
                raise ValueError(f"{n}: a row is no distribution (NaN, infinite or negative, or all zero)")
        bonus_probs = target[:, spec].detach().double()
        bonus = torch.multinomial(bonus_probs, 1).reshape(batch).to(ids.device)
        total = batch * spec
        dev = draft.device
        return Inputs(self.op, {"batch": batch, "vocab": vocab, "max_draft": spec, "dtype": dtype_name(draft)},
                      (ids.reshape(total).long(), draft.reshape(total, vocab), target[:, :spec].reshape(total, vocab),
                       bonus),
                      dict(uniforms=torch.rand(total, device=dev),
                           recovery_noise=torch.empty(total, vocab, device=dev).exponential_().clamp_min(1e-30),
                           num_draft_tokens=[spec] * batch),
                      data={"bonus_probs": bonus_probs})

    def evaluate(self, spec, definition, guarded, inputs):
        import torch

        from kernels.testing.sampling_stats import judge_samples

        ids, draft, target, bonus = inputs.args
        counts = list(inputs.kwargs["num_draft_tokens"])
        batch, vocab = len(counts), int(target.shape[1])
        s = counts[0] if counts else 0
        out_name, out_spec = next(iter(definition.outputs.items()))
        got = guarded(*inputs.args, **inputs.kwargs)
        if not is_tensor(got) or tuple(got.shape) != (batch, s + 1):
            return "INCORRECT_SHAPE", f"{out_name}: shape {tuple(getattr(got, 'shape', ()))}, " \
                                      f"expected {(batch, s + 1)}", None
        if dtype_name(got) != out_spec.dtype:
            return "INCORRECT_DTYPE", f"{out_name}: dtype {dtype_name(got)}, expected {out_spec.dtype}", None
        bonus_probs = (inputs.data or {}).get("bonus_probs")
        if bonus_probs is None:  # our own call: the bonus is the given token
            bonus_probs = torch.nn.functional.one_hot(bonus.reshape(-1).long().cpu(), vocab).double()
        d3 = draft.detach().cpu().double().numpy().reshape(batch, s, vocab)
        t3 = target.detach().cpu().double().numpy().reshape(batch, s, vocab)
        id2 = ids.detach().cpu().numpy().reshape(batch, s)
        law = outcome_law(d3, t3, id2, bonus_probs.cpu().numpy())
        n = SAMPLES
        per_call = max(1, CHUNK_ELEMENTS // max(batch * s * vocab, 1))
        codes = np.zeros((batch, 0), dtype=np.int64)
        while codes.shape[1] < n:
            m = min(per_call, n - codes.shape[1])
            rep = lambda x: x.reshape(batch, -1, *x.shape[1:]).repeat_interleave(m, 0).reshape(-1, *x.shape[1:])
            b_rep = torch.multinomial(bonus_probs.cpu(), m, replacement=True).reshape(-1).to(bonus.device)
            total = batch * m * s
            out = guarded(rep(ids), rep(draft), rep(target), b_rep, uniforms=torch.rand(total, device=draft.device),
                          recovery_noise=torch.empty(total, vocab, device=draft.device).exponential_(),
                          num_draft_tokens=[s] * (batch * m))
            out = out.detach().cpu().numpy().reshape(batch, m, s + 1)
            part = np.stack([encode(out[b], id2[b], b_rep.cpu().numpy().reshape(batch, m)[b], vocab)
                             for b in range(batch)])
            codes = np.concatenate([codes, part], axis=1)
        support = law > 0
        fit = judge_samples(codes, law, support, support)
        extra = {"servekernels": {
            "passed": fit.ok, "detail": fit.detail, "samples_per_request": n, "alpha": fit.alpha,
            "level": fit.level, "bins": fit.num_bins, "outside_support": fit.outside,
            "rule": "statistical: each draw's (first rejected position, token) inside the support of the exact "
                    "law, then a goodness-of-fit test per bin (kernels.testing.sampling_stats)"},
            "flashinfer_bench_rule": {"passed": None, "note": "no flashinfer-bench definition or evaluator for it"},
            "rules_disagree": False}
        corr = {"max_absolute_error": 0.0, "max_relative_error": 0.0, "extra": extra}
        if fit.ok:
            return "PASSED", "", corr
        detail = re.sub(r"token (\d+) drawn", lambda m: f"outcome (position {int(m.group(1)) // vocab}, token "
                        f"{int(m.group(1)) % vocab}) drawn", fit.detail)
        return "INCORRECT_NUMERICAL", (f"statistical oracle, {n} draws a request (row: the request; an outcome: the "
                                       f"first rejected position, or {s} when all are accepted, and the token "
                                       f"emitted there, coded position * {vocab} + token, -1 for a row not of the "
                                       f"form accepted drafts, one token, -1s): {detail}"), corr
