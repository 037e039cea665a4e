"""flashinfer-bench's ``gemm_n{N}_k{K}`` and FlashInfer's ``tinygemm_bf16`` / ``mm_M1_16_K7168_N256`` templates
<-> ``grouped_gemm`` with one group.

Mapping rules:

- flashinfer-bench's form (``form="fib"``): ``C [M, N] = A [M, K] @ B [N, K].T``, A, B and C in one dtype (float16
  for most published definitions, bfloat16 for some: the name does not say which), N and K const axes. Theirs ->
  ours: ``a = A``, ``w = B[None]`` (one expert), ``group_offsets = [0, M]``, no ``out_dtype`` (y in a's dtype);
- FlashInfer's ``tinygemm_bf16`` (``form="tinygemm"``): ``out = input @ weight.T (+ bias)`` written into ``out``;
  only ``bias=None`` maps (the contract's dense grouped GEMM has no bias: a workload with one is refused, and the
  template check calls its reference without it); ``use_pdl`` is a launch option;
- FlashInfer's ``mm_M1_16_K7168_N256`` (DeepSeek-V3's router GEMM, ``form="router"``): ``out = mat_a @ mat_b``
  with ``mat_b [K, N]`` (not transposed): ``w = mat_b.T[None]``;
- ours -> theirs (``implementation``): each group of rows of a contract call is one GEMM call of the Solution
  (``A`` = the group's rows, ``B`` = its expert's weight; a group without rows is not called: its weight is
  NaN-poisoned); a call asking for another ``out_dtype`` than a's is refused (the Definition's C is in A's dtype);
- export: the one-expert cases in a's dtype, named ``gemm_n{N}_k{K}`` (``_float32`` where a is float32); the judge
  matches our cases to a Definition by name and dtypes, so a float16 case never stands for a bfloat16 definition.
"""
from __future__ import annotations

import re

from kernels.ops import Inputs
from servekernels.trace.schema import Axis, Definition, TensorSpec
from servekernels.trace.families._base import Family, Template, dtype_name

_FIB = re.compile(r"^gemm_n(\d+)_k(\d+)(_[a-z0-9_]+)?$")
_DTYPES = ("float16", "bfloat16", "float32")

_GEMM_RUN = '''import torch


@torch.no_grad()
def run(A, B):
    # C = A @ B.T, float64 inside, rounded once to A's dtype
    return (A.to(torch.float64) @ B.to(torch.float64).T).to(A.dtype)
'''

# form -> (name pattern, activation input, weight input, output, whether the weight is [K, N])
_FORMS = {
    "fib": (_FIB, "A", "B", "C", False),
    "tinygemm": (re.compile(r"^tinygemm_bf16(_n\d+)?(_k\d+)?(_[a-z0-9_]+)?$"), "input", "weight", "out", False),
    "router": (re.compile(r"^mm_M1_16_K7168_N256(_[a-z0-9_]+)?$"), "mat_a", "mat_b", "out", True),
}


class Gemm(Family):
    """A plain GEMM (``form``: flashinfer-bench's ``gemm_n{N}_k{K}``, FlashInfer's ``tinygemm_bf16`` or its
    DeepSeek-V3 router GEMM) <-> ``grouped_gemm``, one call per group (the module docstring)."""

    op = "grouped_gemm"

    def __init__(self, form: str = "fib"):
        if form not in _FORMS:
            raise ValueError(f"form: one of {sorted(_FORMS)}, got {form!r}")
        self.form = form
        self._re, self.a_name, self.b_name, self.c_name, self.b_kn = _FORMS[form]
        if form == "fib":
            self.name, self.published, self.templates = "gemm", ("gemm",), ()
        elif form == "tinygemm":
            self.name, self.published = "tinygemm_bf16", ("tinygemm_bf16",)
            self.templates = (Template("gemm", "tinygemm_bf16_trace", dict(M=5, N=96, K=256),
                                       ("input", "weight", "out")),)
        else:
            self.name, self.published = "mm_M1_16_K7168_N256", ("mm_M1_16_K7168_N256",)
            self.templates = (Template("gemm", "mm_M1_16_K7168_N256_trace", dict(M=9), ("mat_a", "mat_b", "out")),)

    def covers(self, definition):
        return bool(self._re.match(definition.name))

    def why_not(self, definition):
        a, b, c = self.a_name, self.b_name, self.c_name
        missing = [n for n in (a, b) if n not in definition.inputs]
        known = {a, b, c, "bias", "use_pdl", "launch_with_pdl"}
        unknown = [n for n, s in definition.inputs.items() if n not in known]
        if missing or unknown or c not in definition.outputs or len(definition.outputs) != 1:
            return (f"inputs {sorted(definition.inputs)}, outputs {sorted(definition.outputs)}: this adapter maps "
                    f"{a}, {b} -> {c}")
        spec = definition.inputs.get("bias")
        if spec is not None and not spec.optional:
            return "a required bias: the contract's dense grouped GEMM has none"
        bad = [n for n in (a, b) if definition.inputs[n].dtype not in _DTYPES + ("unknown",)]
        if bad:
            return f"inputs {bad}: dtype not in {_DTYPES} (a quantized GEMM is another op)"
        if self.form == "fib":
            m = _FIB.match(definition.name)
            axes = definition.const_axes()
            for ax, want in (("N", int(m.group(1))), ("K", int(m.group(2)))):
                if axes.get(ax) is not None and axes[ax] != want:
                    return f"axis {ax}: {axes[ax]}, the name says {want}"
        return ""

    def _plain(self, inputs):
        a, w = inputs.args[0], inputs.args[1]
        out_dtype = inputs.kwargs.get("out_dtype")
        return (self.form == "fib" and hasattr(w, "dim") and w.dim() == 3 and int(w.shape[0]) == 1
                and (out_dtype is None or out_dtype == a.dtype))

    def definition_for(self, spec, case, inputs, expected):
        if not self._plain(inputs):
            return None
        a, w = inputs.args[0], inputs.args[1]
        n, k, dt = int(w.shape[1]), int(w.shape[2]), dtype_name(a)
        return Definition(
            f"gemm_n{n}_k{k}" + ("_float32" if dt == "float32" else ""), "gemm",
            {"M": Axis("var"), "N": Axis("const", n), "K": Axis("const", k)},
            {"A": TensorSpec(["M", "K"], dt), "B": TensorSpec(["N", "K"], dt)},
            {"C": TensorSpec(["M", "N"], dt)}, _GEMM_RUN,
            tags=["status:verified", "servekernels", f"servekernels:op={self.op}"],
            description="General matrix multiply (GEMM) C = A @ B.T, exported by servekernels from its grouped_gemm "
                        f"op (one expert) check case {case}.")

    def named(self, definition, inputs):
        return self._named(inputs.args[0], inputs.args[1][0])

    def _named(self, a, w_nk):
        import torch

        out = {self.a_name: a, self.b_name: w_nk.T if self.b_kn else w_nk}
        if self.form != "fib":  # FlashInfer's forms write into a preallocated output
            out[self.c_name] = torch.empty(int(a.shape[0]), int(w_nk.shape[0]), dtype=a.dtype, device=a.device)
        return out

    def inputs_from(self, definition, named):
        import torch

        if named.get("bias") is not None:
            raise ValueError(f"bias: {definition.name}'s workload has one; the contract's dense GEMM has no bias")
        a, b = named[self.a_name], named[self.b_name]
        w = (b.T if self.b_kn else b).contiguous()[None]
        m = int(a.shape[0])
        shape = {"tokens": m, "experts": 1, "n": int(w.shape[1]), "k": int(w.shape[2]), "dtype": dtype_name(a),
                 "group_size": None, "group_sizes": [m]}
        return Inputs(self.op, shape, (a, w, torch.tensor([0, m], dtype=torch.int32)), {})

    def implementation(self, definition, solve):
        fam = self

        def impl(a, w, group_offsets, *, out_dtype=None, batch_invariant=False):
            import torch

            from kernels.ops import Unsupported

            if out_dtype is not None and out_dtype != a.dtype:
                raise Unsupported(f"out_dtype: {definition.name}'s output is in A's dtype, the call asks {out_dtype}")
            offs = [int(x) for x in group_offsets.cpu().tolist()]
            y = torch.empty(int(a.shape[0]), int(w.shape[1]), dtype=a.dtype, device=a.device)
            for e in range(int(w.shape[0])):
                r0, r1 = offs[e], offs[e + 1]
                if r1 > r0:
                    named = fam._named(a[r0:r1], w[e])
                    got = solve(named)[fam.c_name]
                    if got is None and fam.c_name in named:  # FlashInfer's forms may write ``out`` and return None
                        got = named[fam.c_name]
                    if not isinstance(got, torch.Tensor) or got.dtype != a.dtype or tuple(got.shape) != (r1 - r0,
                                                                                                       y.shape[1]):
                        raise ValueError(f"{fam.c_name}: expected a {a.dtype} tensor of shape {(r1 - r0, y.shape[1])}"
                                         f", got {getattr(got, 'dtype', type(got).__name__)} "
                                         f"{tuple(getattr(got, 'shape', ()))}")
                    y[r0:r1] = got
            return y

        return impl

    def theirs(self, definition, outputs):
        return {self.c_name: outputs["y"]}

    def template_named(self, template, init):
        return {k: v for k, v in init.items() if k != "bias"}  # tinygemm's init adds one: checked with bias=None


_FP8_FORMS = {  # form -> (name pattern, (activation, weight, activation scales, weight scales))
    "groupwise": (re.compile(r"^gemm_fp8_nt_groupwise(_n\d+)?(_k\d+)?(_[a-z0-9_]+)?$"),
                  ("a", "b", "a_scale", "b_scale")),
    "sm90": (re.compile(r"^fp8_blockscale_gemm_sm90(_n\d+)?(_k\d+)?(_[a-z0-9_]+)?$"),
             ("input", "weight", "input_scale", "weight_scale")),
}


class Fp8GroupwiseGemm(Family):
    """FlashInfer's ``gemm_fp8_nt_groupwise`` (its trtllm layout; ``form="groupwise"``) and
    ``fp8_blockscale_gemm_sm90`` (``form="sm90"``) templates <-> ``grouped_gemm_fp8`` with one group.

    ``out [M, N] bfloat16 = (a * a_scale) @ (b * b_scale).T`` with ``a, b`` float8_e4m3fn, ``a_scale [M, K / bk]``
    (1 x bk activation groups) and ``b_scale [ceil(N / bk), K / bk]`` (bk x bk weight blocks; bk = K /
    a_scale's columns, 128 for sm90, whose scales are optional: an absent one is 1). Theirs -> ours: ``a_fp8 =
    a``, ``a_scales = a_scale``, the weight an ``Fp8Weight`` of ``b[None]``, ``b_scale[None]``, granularity
    "block", block ``(bk, bk)``, ``out_dtype`` bfloat16. Ours -> theirs: one call per group with rows; a call
    with another granularity or output dtype is refused. Judged only (no export: the registry's fp8 case has
    sixteen experts and a float16 output)."""

    op = "grouped_gemm_fp8"

    def __init__(self, form: str = "groupwise"):
        if form not in _FP8_FORMS:
            raise ValueError(f"form: one of {sorted(_FP8_FORMS)}, got {form!r}")
        self.form = form
        self._re, self.names = _FP8_FORMS[form]
        self.name = "gemm_fp8_nt_groupwise" if form == "groupwise" else "fp8_blockscale_gemm_sm90"
        self.published = (self.name,)
        n = 200 if form == "groupwise" else 256  # sm90's init quantizes whole 128 x 128 blocks only
        self.templates = (Template("gemm", f"{self.name}_trace", dict(M=5, N=n, K=384), self.names),)

    def covers(self, definition):
        return bool(self._re.match(definition.name))

    def why_not(self, definition):
        missing = [n for n in self.names[:2] if n not in definition.inputs]
        missing += [n for n in self.names[2:] if n not in definition.inputs and self.form == "groupwise"]
        if missing or "out" not in definition.outputs or len(definition.outputs) != 1:
            return f"inputs {sorted(definition.inputs)}, outputs {sorted(definition.outputs)}: this adapter maps " \
                   f"{self.names} -> out"
        bad = [n for n in self.names[:2] if definition.inputs[n].dtype not in ("float8_e4m3fn", "unknown")]
        if bad:
            return f"inputs {bad}: not float8_e4m3fn"
        if definition.outputs["out"].dtype not in ("bfloat16", "unknown"):
            return f"out: {definition.outputs['out'].dtype}, this adapter maps a bfloat16 output"
        return ""

    def _plain(self, inputs):
        return False

    def definition_for(self, spec, case, inputs, expected):
        return None

    def template_named(self, template, init):
        return {n: init[n] for n in self.names}

    def inputs_from(self, definition, named):
        import numpy as np
        import torch

        from kernels.reference.quant import Fp8Weight

        a, b, a_s, b_s = (named.get(n) for n in self.names)
        (m, k), n = (int(s) for s in a.shape), int(b.shape[0])
        bk = k // int(a_s.shape[1]) if a_s is not None else 128  # sm90: 1 x 128 and 128 x 128, a scale may be absent
        if a_s is None:
            a_s = torch.ones(m, -(-k // bk), dtype=torch.float32, device=a.device)
        if b_s is None:
            b_s = torch.ones(-(-n // bk), -(-k // bk), dtype=torch.float32, device=a.device)
        if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
            raise ValueError(f"{self.names[0]}, {self.names[1]}: float8_e4m3fn expected, got {a.dtype}, {b.dtype}")
        if bk * int(a_s.shape[1]) != k or tuple(b_s.shape) != (-(-n // bk), -(-k // bk)):
            raise ValueError(f"b_scale: shape {tuple(b_s.shape)}, expected {(-(-n // bk), -(-k // bk))} for "
                             f"{bk} x {bk} blocks (bk = K / a_scale's columns = {k} / {int(a_s.shape[1])})")
        w = Fp8Weight(b.contiguous()[None], b_s.to(torch.float32).contiguous()[None], "block", (bk, bk))
        a64 = a.double().cpu().numpy() * np.repeat(a_s.double().cpu().numpy(), bk, axis=1)[:, :k]
        shape = {"tokens": m, "experts": 1, "n": n, "k": k, "dtype": "bfloat16", "group_size": bk,
                 "granularity": "block", "out_dtype": "bfloat16", "group_sizes": [m]}
        return Inputs(self.op, shape, (a, a_s.to(torch.float32), w, torch.tensor([0, m], dtype=torch.int32)),
                      {"out_dtype": torch.bfloat16}, {"a64": a64})

    def implementation(self, definition, solve):
        names = self.names

        def impl(a_fp8, a_scales, weight, group_offsets, *, out_dtype="bfloat16", batch_invariant=False):
            import torch

            from kernels.ops import Unsupported

            if weight.granularity != "block" or str(out_dtype).replace("torch.", "") != "bfloat16":
                raise Unsupported(f"granularity / out_dtype: {definition.name} takes block scales and writes "
                                  f"bfloat16, the call has {weight.granularity} and {out_dtype}")
            offs = [int(x) for x in group_offsets.cpu().tolist()]
            y = torch.empty(int(a_fp8.shape[0]), int(weight.data.shape[1]), dtype=torch.bfloat16,
                            device=a_fp8.device)
            for e in range(int(weight.data.shape[0])):
                r0, r1 = offs[e], offs[e + 1]
                if r1 > r0:
                    got = solve(dict(zip(names, (a_fp8[r0:r1], weight.data[e], a_scales[r0:r1],
                                                 weight.scales[e]))))["out"]
                    if not isinstance(got, torch.Tensor) or got.dtype != y.dtype or tuple(got.shape) != (
                            r1 - r0, y.shape[1]):
                        raise ValueError(f"out: expected a bfloat16 tensor of shape {(r1 - r0, y.shape[1])}, got "
                                         f"{getattr(got, 'dtype', type(got).__name__)} "
                                         f"{tuple(getattr(got, 'shape', ()))}")
                    y[r0:r1] = got
            return y

        return impl

    def theirs(self, definition, outputs):
        return {"out": outputs["y"]}
