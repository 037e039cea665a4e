"""FlashInfer-Trace sampling families <-> ``top_k_top_p_sample``, judged by the statistical oracle.

Families (``published``):

- flashinfer-bench's ``top_k_sampling_from_probs_v{V}``, ``top_p_sampling_from_probs_v{V}`` and
  ``top_k_top_p_sampling_from_probs_v{V}``; FlashInfer's templates ``top_k_sampling``, ``top_p_sampling``,
  ``top_k_top_p_sampling`` (the same inputs: ``probs [batch, V]`` float32, per-row ``top_k`` int32 and ``top_p``
  float32; output ``samples [batch]`` int64) and ``sampling_from_probs`` (``probs``, optional ``indices``;
  ``samples`` int32): ``SamplingFromProbs``;
- FlashInfer's ``sampling_from_logits`` and ``top_k_top_p_sampling_from_logits`` (``logits``, scalar ``top_k`` /
  ``top_p``, optional ``indices``; ``samples`` int32): ``SamplingFromLogits``.

Mapping rules (their inputs -> the contract's call; ``implementation`` goes the other way):

- ``probs`` -> ``logits = log(probs)`` (probability 0 -> ``-inf``: never kept), temperature 1; a row is taken as
  weights (normalised by its sum, as ``torch.multinomial`` does; their inputs are softmax outputs);
  ``logits`` -> ``logits``, temperature 1; ``indices`` (output i samples row ``indices[i]``) gathers the rows;
- ``top_k``: ``0 < k < V`` keeps the top k, anything else keeps all (theirs and ours alike); absent: 0;
- ``top_p``: ``p <= 0`` is the argmax (their reference's rule) -> that row's temperature 0; ``p >= 1`` keeps all
  -> 1; absent: 1; a NaN/negative/infinite probability or an all-zero row is a ``ValueError`` naming ``probs``.
- the other way (our cases as their workloads): ``probs = softmax(logits / temperature)`` in float32; a
  temperature-0 row -> ``softmax(logits)`` with ``top_p = 0`` (only a Definition with ``top_p`` expresses it).

Semantics: their reference keeps exactly k tokens at top-k (``argsort``: which of the tokens tied at the k-th
it keeps is arbitrary) and at top-p the sorted prefix up to the first token whose cumulative mass exceeds p
(``cdf > p``, ties again cut arbitrarily); the contract keeps every tied token and stops at the first prefix
whose mass *reaches* p. So a row with a tie group straddling either boundary has no single distribution under
their definition: that row gets the support check only (every sample inside our kept set, which holds every
tie-break of theirs); the reach/exceed difference is a measure-zero equality that float32 rounding decides
anyway (``kept_bounds`` makes such a token "possibly kept": support only). Top-p is measured against the
top-k set's mass in both (their reference renormalises after top-k).

The judge (``evaluate``): a Solution owns its RNG (no noise input), so no per-element comparison exists. Each
workload is judged by ``kernels.testing.sampling_stats`` on the contract's terms: one call checked for shape and
dtype, then ``N`` draws of every row (the rows repeated, in chunks), every draw inside the possibly-kept set,
then a goodness-of-fit test at false-alarm probability 1e-6 on every row whose kept set is sure. flashinfer-bench's
own rule (its ``SamplingEvaluator``: a support mask, then total variation <= 0.2 over 500000 draws a row) is
reported beside it, recomputed on the same draws.
"""
from __future__ import annotations

import math
import re

import numpy as np

from kernels.ops import Inputs
from servekernels.trace.families._base import Family, Template, dtype_name, is_tensor
from servekernels.trace.schema import Axis, Definition, TensorSpec

# ``{top_k|top_p|top_k_top_p}_sampling[_from_probs]_v{V}`` (flashinfer-bench, FlashInfer templates) and
# ``sampling_from_probs_v{V}`` (FlashInfer template); the logits forms
_PROBS = re.compile(r"^(?:(top_k|top_p|top_k_top_p)_sampling(?:_from_probs)?|sampling_from_probs)"
                    r"_v(\d+)(_[a-z0-9_]+)?$")
_LOGITS = re.compile(r"^(top_k_top_p_)?sampling_from_logits_v(\d+)(_[a-z0-9_]+)?$")
_KNOWN = {"probs", "logits", "top_k", "top_p", "indices"}

SAMPLES = 2000  # draws per row: a kept token of mass >= 1% never drawn is caught with certainty (L ~ 17-20)
MIN_SAMPLES = 300
ELEMENT_BUDGET = 1 << 30  # rows x draws x V streamed through the Solution per workload, at most
CHUNK_ELEMENTS = 1 << 23  # rows x V per call
FIB_TV = 0.2  # flashinfer-bench's SamplingEvaluator: total variation limit
FIB_TOP_P_EPS = 5e-2  # and its top-p mask's slack (cumulative mass <= p + 0.05)

_REF = '''import torch


@torch.no_grad()
def run({params}):
    # per row, in float64: top-k keeps every token whose probability is >= the k-th largest (ties kept;
    # k <= 0 or >= vocab: all); top-p then keeps token j iff the top-k mass strictly above it is below p times
    # the top-k mass (the shortest prefix reaching p, with its ties); p <= 0: the argmax; then one draw.
    {prologue}
    batch, vocab = probs.shape
    samples = torch.empty(batch, dtype=torch.int64, device=probs.device)
    for i in range(batch):
        row = probs[i]
        k = {k_expr}
        p = {p_expr}
        if p <= 0.0:
            samples[i] = int(torch.argmax(row))
            continue
        if 0 < k < vocab:
            kth = torch.topk(row, k).values[-1]
            row = torch.where(row >= kth, row, torch.zeros_like(row))
        if p < 1.0:  # the sorted prefix whose mass before each token is below p of the whole, then its ties
            vals = torch.sort(row, descending=True).values
            before = torch.cumsum(vals, 0) - vals
            last = vals[int((before < p * vals.sum()).sum()) - 1]
            row = torch.where(row >= last, row, torch.zeros_like(row))
        samples[i] = torch.multinomial(row, 1).squeeze(0)
    return samples.to(torch.{out_dtype})
'''


def _rows(x, batch: int, kind) -> np.ndarray:
    """A scalar or per-row parameter as a host array ``[batch]``."""
    if is_tensor(x):
        return x.detach().cpu().double().numpy().reshape(-1).astype(kind) if x.numel() != 1 else \
            np.full(batch, float(x.item())).astype(kind)
    return np.full(batch, x).astype(kind)


class _Sampling(Family):
    """The shared mapping and the statistical judge; subclasses fix the input form."""

    op = "top_k_top_p_sample"
    draws = True
    source = ""  # "probs" or "logits"

    # ------------------------------------------------------------------------------- which Definitions

    def _match(self, name: str):
        raise NotImplementedError

    def covers(self, definition):
        return bool(self._match(definition.name))

    def why_not(self, definition):
        if self.source not in definition.inputs:
            return f"inputs {sorted(definition.inputs)}: this adapter maps {self.source!r}"
        unknown = [n for n, s in definition.inputs.items() if n not in _KNOWN and not s.optional]
        if unknown:
            return f"required inputs {unknown} have no meaning in the top_k_top_p_sample contract"
        if len(definition.outputs) != 1:
            return f"outputs {sorted(definition.outputs)}: one output of sampled token ids expected"
        out = next(iter(definition.outputs.values()))
        if out.dtype not in ("int32", "int64"):
            return f"output dtype {out.dtype}: token ids are int32 or int64"
        return ""

    def _vocab(self, definition) -> int | None:
        m = self._match(definition.name)
        return int(m.group(2)) if m else None

    # ------------------------------------------------------------------------------- contract -> theirs

    def _plain(self, inputs: Inputs) -> bool:
        """No row this form cannot express: every row has a positive-probability token and no NaN/+inf."""
        import torch

        x = inputs.args[0].detach().double().cpu()
        usable = torch.isfinite(x).any(1) & ~torch.isnan(x).any(1) & ~(x == float("inf")).any(1)
        return bool(usable.all()) and x.shape[1] >= 1

    def _call_named(self, definition, logits, temperature, top_k, top_p) -> dict:
        """The contract's call as the Definition's named inputs (``Unsupported`` where it cannot say it)."""
        import torch

        from kernels.ops import Unsupported

        batch, vocab = int(logits.shape[0]), int(logits.shape[1])
        t = _rows(temperature, batch, np.float64)
        k = _rows(top_k, batch, np.int64)
        p = _rows(top_p, batch, np.float64)
        greedy = t == 0
        ins = definition.inputs
        k_on = (k > 0) & (k < vocab) & ~greedy
        p_on = (p < 1) & ~greedy
        for name, on, what in (("top_k", k_on, "top-k"), ("top_p", p_on | greedy, "top-p (or temperature 0)")):
            if bool(on.any()) and name not in ins:
                raise Unsupported(f"{name}: {definition.name} has no {name} input, so it cannot express {what}")
        scale = torch.from_numpy(np.where(greedy, 1.0, t)).to(logits.device)[:, None]
        s = logits.detach().to(torch.float64) / scale
        named = {}
        if self.source == "probs":
            named["probs"] = torch.softmax(s, dim=-1).to(torch.float32)
        else:
            named["logits"] = s.to(torch.float32)
        k_out = np.where(k_on, k, 0)
        p_out = np.where(greedy, 0.0, p)
        for name, vals, dt in (("top_k", k_out, torch.int32), ("top_p", p_out, torch.float32)):
            if name not in ins:
                continue
            if ins[name].shape is None:  # a scalar input (FlashInfer's from-logits template)
                if len(set(vals.tolist())) > 1:
                    raise Unsupported(f"per_row_parameters: {definition.name}'s {name} is one scalar")
                named[name] = int(vals[0]) if dt == torch.int32 else float(vals[0])
            else:
                named[name] = torch.from_numpy(vals).to(dt).to(logits.device)
        return named

    def named(self, definition, inputs):
        kw = inputs.kwargs
        return self._call_named(definition, inputs.args[0], kw["temperature"], kw["top_k"], kw["top_p"])

    def implementation(self, definition, solve):
        fam = self
        out = next(iter(definition.outputs))

        def impl(logits, *, temperature, top_k, top_p, noise=None, validate=True):
            # noise is not passed on: a FlashInfer-Trace sampler draws its own randomness
            return solve(fam._call_named(definition, logits, temperature, top_k, top_p))[out]

        return impl

    def theirs(self, definition, outputs):
        """The token ids in the Definition's output dtype (int32 for FlashInfer's templates, int64 else)."""
        import torch

        name, out = next(iter(definition.outputs.items()))
        return {name: outputs["token"].to(getattr(torch, out.dtype))}

    # ------------------------------------------------------------------------------- theirs -> contract

    def inputs_from(self, definition, named):
        import torch

        src = named[self.source]
        idx = named.get("indices")
        if idx is not None:
            src = src[idx.long()]
        batch, vocab = int(src.shape[0]), int(src.shape[1])
        if self.source == "probs":
            p64 = src.detach().to(torch.float64)
            bad = ~torch.isfinite(p64).all(1) | (p64 < 0).any(1) | ~(p64 > 0).any(1)
            if bool(bad.any()):
                r = int(torch.nonzero(bad)[0])
                raise ValueError(f"probs: row {r} is no distribution (a NaN, infinite or negative value, or no "
                                 f"positive probability); {definition.name} samples from probabilities")
            with np.errstate(divide="ignore"):
                logits = torch.log(p64).to(torch.float32)
        else:
            logits = src if dtype_name(src) in ("float16", "bfloat16", "float32") else src.to(torch.float32)
        k = _rows(named["top_k"], batch, np.int64) if named.get("top_k") is not None else np.zeros(batch, np.int64)
        p = _rows(named["top_p"], batch, np.float64) if named.get("top_p") is not None else np.ones(batch)
        greedy = p <= 0
        temp = torch.from_numpy(np.where(greedy, 0.0, 1.0)).to(torch.float32)
        top_p = torch.from_numpy(np.where(greedy | (p >= 1), 1.0, p)).to(torch.float32)
        top_k = torch.from_numpy(np.where((k > 0) & (k < vocab), k, 0))
        dev = logits.device
        shape = {"batch": batch, "vocab": vocab, "dtype": dtype_name(logits), "per_row": True}
        return Inputs(self.op, shape, (logits,), dict(temperature=temp.to(dev), top_k=top_k.to(dev),
                                                      top_p=top_p.to(dev)))

    # ------------------------------------------------------------------------------- the judge

    def evaluate(self, spec, definition, guarded, inputs) -> tuple[str, str, dict | None]:
        """``(status, log, correctness)``: one call's shape and dtype, then the statistical oracle on ``N`` draws
        a row (``oracle_sets``, ``kernels.testing.sampling_stats.judge_samples``)."""
        import torch

        from kernels.testing.sampling_stats import draw_samples, judge_samples, tv_rule

        logits = inputs.args[0]
        params = {k: v for k, v in inputs.kwargs.items() if k != "noise"}
        batch, vocab = int(logits.shape[0]), int(logits.shape[1])
        out_name, out_spec = next(iter(definition.outputs.items()))
        got = guarded(logits, noise=None, **params)
        if not is_tensor(got) or tuple(got.shape) != (batch,):
            return "INCORRECT_SHAPE", f"{out_name}: shape {tuple(getattr(got, 'shape', ()))}, expected ({batch},)", None
        if dtype_name(got) != out_spec.dtype:
            return "INCORRECT_DTYPE", f"{out_name}: dtype {dtype_name(got)}, expected {out_spec.dtype}", None
        q, sure, maybe = oracle_sets(logits, **params)
        n = int(min(SAMPLES, max(MIN_SAMPLES, ELEMENT_BUDGET // max(batch * vocab, 1))))
        per_call = max(1, CHUNK_ELEMENTS // max(batch * vocab, 1))
        parts, drawn = [], 0
        while drawn < n:
            m = min(per_call, n - drawn)
            parts.append(draw_samples(guarded, logits, m, **params))
            drawn += m
        samples = np.concatenate(parts, axis=1)
        fit = judge_samples(samples, q, sure, maybe)
        emp = np.stack([np.bincount(np.clip(r, 0, vocab - 1), minlength=vocab) / n for r in samples])
        big = q >= 0.002
        err = np.abs(emp - q)
        fib_support = fib_mask(_their_probs(logits, params), _rows(params["top_k"], batch, np.int64),
                               _rows(params["top_p"], batch, np.float64), definition)
        fib_outside = int(sum((~fib_support[r, np.clip(samples[r], 0, vocab - 1)]).sum() for r in range(batch)))
        tv_ok, tv = tv_rule(samples, q, FIB_TV)
        fib_ok = tv_ok and fib_outside == 0 and bool(((samples >= 0) & (samples < vocab)).all())
        sure_mass = 1 - math.exp(-fit.level / n)
        extra = {
            "servekernels": {
                "passed": fit.ok, "detail": fit.detail,
                "rule": "statistical (the Solution draws its own randomness): every draw inside the possibly-kept "
                        "set, then a goodness-of-fit test per bin at false-alarm probability alpha "
                        "(kernels.testing.sampling_stats)",
                "samples_per_row": n, "alpha": fit.alpha, "level": fit.level, "bins": fit.num_bins,
                "fit_rows": fit.tested_rows, "support_only_rows": batch - fit.tested_rows,
                "outside_kept_set": fit.outside,
                "power": f"a kept token of mass >= {sure_mass:.4f} that is never drawn fails with certainty",
            },
            "flashinfer_bench_rule": {
                "passed": fib_ok, "outside_their_mask": fib_outside, "max_tv": tv, "tv_limit": FIB_TV,
                "note": f"their SamplingEvaluator's support mask (top-k: prob >= the k-th; top-p: cumulative mass "
                        f"<= p + {FIB_TOP_P_EPS} on the unfiltered probs) and total variation, recomputed on these "
                        f"{n} draws a row (theirs takes 500000)"},
            "rules_disagree": fit.ok != fib_ok,
        }
        corr = {"max_absolute_error": float(err[big].max()) if big.any() else 0.0,
                "max_relative_error": float((err[big] / q[big]).max()) if big.any() else 0.0, "extra": extra}
        if fit.ok:
            return "PASSED", "", corr
        log = (f"statistical oracle, {n} draws a row: {fit.detail}" if fit.detail else "statistical oracle failed")
        return "INCORRECT_NUMERICAL", log, corr

    def random_input(self, definition, name, value):
        import torch

        # flashinfer-bench's gen_inputs: a random ``probs`` of a sampling definition is softmax(randn)
        return torch.softmax(value.to(torch.float32), dim=-1) if name == "probs" else value

    # ------------------------------------------------------------------------------- export

    def _definition(self, vocab: int, name: str, inputs: dict, out_dtype: str, description: str) -> Definition:
        params = ", ".join(inputs)
        prologue = ("probs = probs.to(torch.float64)" if self.source == "probs" else
                    "probs = torch.softmax(logits.to(torch.float64), dim=-1)")

        def expr(n, cast, off):
            if n not in inputs:
                return off
            return f"{cast}({n})" if inputs[n].shape is None else f"{cast}({n}[i])"

        ref = _REF.format(params=params, prologue=prologue, k_expr=expr("top_k", "int", "0"),
                          p_expr=expr("top_p", "float", "1.0"), out_dtype=out_dtype)
        axes = {"batch_size": Axis("var", description="Number of sequences to sample from"),
                "vocab_size": Axis("const", vocab, "Vocabulary size")}
        return Definition(name, "sampling", axes, inputs,
                          {"samples": TensorSpec(["batch_size"], out_dtype, "Sampled token indices")}, ref,
                          tags=["status:verified", "servekernels", f"servekernels:op={self.op}"],
                          description=description)


class SamplingFromProbs(_Sampling):
    """flashinfer-bench's ``{top_k,top_p,top_k_top_p}_sampling_from_probs_v{V}`` and FlashInfer's templates of
    the same names and ``sampling_from_probs`` <-> ``top_k_top_p_sample`` (probs -> log-probs, temperature 1)."""

    name = "sampling_from_probs"
    source = "probs"
    published = ("top_k_sampling_from_probs", "top_p_sampling_from_probs", "top_k_top_p_sampling_from_probs",
                 "top_k_sampling", "top_p_sampling", "top_k_top_p_sampling", "sampling_from_probs")
    templates = (Template("sampling", "top_k_sampling_trace", dict(batch_size=3, vocab_size=256), ("probs", "top_k")),
                 Template("sampling", "top_p_sampling_trace", dict(batch_size=3, vocab_size=256), ("probs", "top_p")),
                 Template("sampling", "top_k_top_p_sampling_trace", dict(batch_size=3, vocab_size=256),
                          ("probs", "top_k", "top_p")),
                 Template("sampling", "sampling_from_probs_trace", dict(batch_size=3, vocab_size=256), ("probs",)))

    def _match(self, name):
        m = _PROBS.match(name)
        return m

    def definition_for(self, spec, case, inputs, expected):
        """flashinfer-bench's most general form, ``top_k_top_p_sampling_from_probs_v{V}`` (a row's top_k 0 and
        top_p 1 turn either filter off; a temperature-0 row is top_p 0), whatever the case's parameters."""
        return self.form(int(inputs.args[0].shape[1]), "top_k_top_p") if self._plain(inputs) else None

    def form(self, vocab: int, kind: str) -> Definition:
        """The Definition of one of flashinfer-bench's three forms (``kind``: "top_k", "top_p", "top_k_top_p")."""
        ins = {"probs": TensorSpec(["batch_size", "vocab_size"], "float32", "Probability distributions (after "
                                                                             "softmax)"),
               "top_k": TensorSpec(["batch_size"], "int32", "Number of top tokens to consider for sampling per "
                                                             "sequence (<= 0 or >= vocab_size: all)"),
               "top_p": TensorSpec(["batch_size"], "float32", "Cumulative probability threshold for nucleus "
                                                               "sampling per sequence (<= 0: the argmax)")}
        drop = {"top_k": "top_p", "top_p": "top_k"}.get(kind)
        return self._definition(
            vocab, f"{kind}_sampling_from_probs_v{vocab}", {n: s for n, s in ins.items() if n != drop}, "int64",
            f"{kind.replace('_', '-')} sampling from probabilities (flashinfer-bench's {kind}_sampling_from_probs), "
            "exported by servekernels from its top_k_top_p_sample op (probs = softmax(logits / temperature)); "
            "tokens tied at the top-k or top-p boundary are all kept (flashinfer-bench's reference keeps an "
            "arbitrary k of them).")


class SamplingFromLogits(_Sampling):
    """FlashInfer's ``sampling_from_logits`` and ``top_k_top_p_sampling_from_logits`` templates (scalar top_k and
    top_p, samples int32) <-> ``top_k_top_p_sample`` at temperature 1."""

    name = "sampling_from_logits"
    source = "logits"
    published = ("sampling_from_logits", "top_k_top_p_sampling_from_logits")
    templates = (Template("sampling", "sampling_from_logits_trace", dict(batch_size=3, vocab_size=256), ("logits",)),
                 Template("sampling", "top_k_top_p_sampling_from_logits_trace", dict(batch_size=3, vocab_size=256),
                          ("logits", "top_k", "top_p")))

    def _match(self, name):
        return _LOGITS.match(name)

    def _plain(self, inputs):
        kw = inputs.kwargs
        scalar = all(not is_tensor(kw[n]) for n in ("temperature", "top_k", "top_p"))
        return scalar and float(kw["temperature"]) > 0 and super()._plain(inputs)

    def definition_for(self, spec, case, inputs, expected):
        """``top_k_top_p_sampling_from_logits_v{V}`` (scalar top_k and top_p) for a case with scalar parameters
        and a positive temperature (the logits handed over are ``logits / temperature`` in float32)."""
        if not self._plain(inputs):
            return None
        vocab = int(inputs.args[0].shape[1])
        ins = {"logits": TensorSpec(["batch_size", "vocab_size"], "float32", "Logits (temperature applied)"),
               "top_k": TensorSpec(None, "int32", "top-k (<= 0 or >= vocab_size: all)"),
               "top_p": TensorSpec(None, "float32", "top-p (<= 0: the argmax)")}
        return self._definition(
            vocab, f"top_k_top_p_sampling_from_logits_v{vocab}", ins, "int32",
            "Fused top-k then top-p sampling from logits (FlashInfer's top_k_top_p_sampling_from_logits, "
            "filter_apply_order top_k_first), exported by servekernels from its top_k_top_p_sample op; tokens "
            "tied at a boundary are all kept.")


def _their_probs(logits, params) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64 (temperature 0: 1), the probabilities their mask reads."""
    x = np.asarray(logits.detach().cpu().double().numpy())
    t = _rows(params["temperature"], x.shape[0], np.float64)
    s = x / np.where(t == 0, 1.0, t)[:, None]
    with np.errstate(invalid="ignore"):
        e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fib_mask(probs: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, definition=None) -> np.ndarray:
    """flashinfer-bench's ``SamplingEvaluator`` support mask, as its source reads (flashinfer_bench/bench/
    evaluators/sampling.py, ``_compute_valid_sampling_mask``): top-k keeps ``probs >= `` the k-th largest; top-p
    keeps the sorted prefix whose cumulative mass (of the unfiltered probs) is ``<= p + 0.05``, at least one
    token. Which filters apply follows the Definition's name (theirs) or, without one, every active one."""
    batch, vocab = probs.shape
    name = getattr(definition, "name", "top_k_top_p")
    use_k, use_p = "top_k" in name, "top_p" in name
    mask = np.ones((batch, vocab), dtype=bool)
    for r in range(batch):
        k, p = int(top_k[r]), float(top_p[r])
        if use_k and 0 < k < vocab:
            mask[r] &= probs[r] >= np.sort(probs[r])[::-1][k - 1]
        if use_p and 0 < p < 1:
            order = np.argsort(-probs[r], kind="stable")
            nucleus = np.cumsum(probs[r][order]) <= p + FIB_TOP_P_EPS
            nucleus[0] = nucleus[0] or not nucleus.any()
            keep = np.zeros(vocab, dtype=bool)
            keep[order[nucleus]] = True
            mask[r] &= keep
    return mask


def oracle_sets(logits, *, temperature, top_k, top_p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q, sure, maybe)`` for ``judge_samples`` under *their* definition: the contract's distribution and
    kept sets (``kernels.reference.sampling``), then every token of a tie group that straddles the top-k or the
    top-p boundary taken out of ``sure`` (their reference keeps an arbitrary part of such a group, ours all of
    it: support check only on that row), and a greedy row's ``maybe`` widened to every token within float32
    rounding of the maximum (an argmax over float32 probabilities may pick any of them)."""
    from kernels.reference.sampling import (_mass_above, _unusable_rows, kept_probabilities, kept_sets,
                                            log_rounding, row_values)

    q = kept_probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    sure, maybe = kept_sets(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    x = np.asarray(logits.detach().cpu().double().numpy()) if is_tensor(logits) else np.asarray(logits, float)
    batch, vocab = x.shape
    t, p = row_values(temperature, batch), row_values(top_p, batch)
    k = row_values(top_k, batch).astype(np.int64)
    bad = _unusable_rows(x)
    for r in range(batch):
        if bad[r]:
            continue
        if t[r] == 0:
            m = x[r].max()
            near = x[r] >= m - 2 * log_rounding(np.array([m]), m)[0]
            maybe[r] |= near
            continue
        s = x[r] / t[r]
        w = np.where(np.isfinite(s), np.exp(s - s.max()), 0.0)
        kept = q[r] > 0
        values, counts = np.unique(s[kept], return_counts=True)
        for v in values[counts > 1]:
            group = s == v
            above = int((s > v).sum())
            straddles_k = 0 < k[r] < vocab and above + int(group.sum()) > k[r]
            in_k = s >= np.sort(s)[::-1][k[r] - 1] if 0 < k[r] < vocab else np.isfinite(s)
            mass_k = float(w[in_k].sum())
            mass_above = float(_mass_above(s, np.where(in_k, w, 0.0), np.array([v]))[0])
            straddles_p = p[r] < 1 and mass_above + (int(group.sum()) - 1) * float(w[group][0]) >= p[r] * mass_k
            if straddles_k or straddles_p:
                sure[r] &= ~group
    return q, sure, maybe
