"""The OpSpec of a grouped GEMM: ``kernels/ops/grouped_gemm*.py`` differ only in the arguments of ``gemm_spec``.
Importing this imports neither torch nor triton (the functions it points to import ``kernels.testing.gemm``
when called)."""
from __future__ import annotations

from kernels.ops import Invariance, OpSpec, ShapeSchema

# the shape of a grouped GEMM call (every ``grouped_gemm*`` op)
GEMM_SHAPE = ShapeSchema(
    required={"tokens": "rows T (every expert's together)", "n": "N", "k": "K", "experts": "E",
              "dtype": "the activations' dtype", "group_size": "int4: the quantization group; fp8: the "
              "activations' scale group; None for dense"},
    optional={"group_sizes": "rows per expert (ragged; the catalogue's routing)", "active_experts": "experts with "
              "a row", "routed_tokens": "tokens before top-k", "top_k": "k", "out_dtype": "the output's dtype",
              "zero_point": "int4 zero points", "granularity": "fp8 weight scales: 'tensor', 'channel', 'block'",
              "bias": "mxfp4: a float32 per-expert bias [E, N] (default True)"})

# counted at full size with K capped at this (``medium_shape``): K scales the operands' traffic alike (N, rows,
# experts and the split plan kept), so each launch's K-proportional bytes scale back along K
GEMM_K_CAP = 512

# the roofline figure's marker and colour of each kind
STYLE = {"bf16": ("D", "tab:red"), "int4": ("P", "tab:purple"), "fp8": ("X", "tab:brown"),
         "mxfp4": ("h", "tab:olive")}

GEMM_GOAL = {"gemm_traffic": (1.2, "grouped GEMMs counted traffic within 1.2x of minimum bytes at decode-sized T")}
MXFP4_GOAL = {"mxfp4_traffic": (1.05, "MXFP4 grouped GEMM counted traffic within 1.05x of minimum bytes (4.25 bits "
                                      "per weight) at T <= 16")}


def _gemm():
    from kernels.testing import gemm  # deferred: the registry loads no torch

    return gemm


def diagnose(inputs, output: str, actual, expected, tol) -> str:
    """A failing ``y`` in rows, experts and columns, and the planted bug it matches (``kernels.testing.diagnosis_experts``)."""
    from kernels.testing.diagnosis_experts import grouped_gemm  # deferred: the registry loads no torch

    return grouped_gemm(inputs, output, actual, expected, tol)


def medium_shape(shape: dict) -> dict | None:
    """The shape with K capped at ``GEMM_K_CAP``, or None when K is already no longer."""
    return dict(shape, k=GEMM_K_CAP) if shape["k"] > GEMM_K_CAP else None
def _out_dtypes(inputs) -> dict:
    """y in ``out_dtype`` where given, else the activations' dtype (the fp8 GEMM's inputs always pass it)."""
    return {"y": inputs.kwargs.get("out_dtype") or inputs.args[0].dtype}


def _draw(kind: str):
    """A grouped GEMM no check shape has: 40 to 120 rows over 4 to 10 experts, N 72 to 200 (a multiple of 8)."""

    def draw(rng) -> dict:
        shape = dict(tokens=rng.randint(40, 120), experts=rng.randint(4, 10), n=8 * rng.randint(9, 25), k=256,
                     dtype="bfloat16", group_size=128 if kind in ("int4", "fp8") else None)
        if kind == "mxfp4":
            shape.update(k=32 * rng.randint(3, 12))
        if kind == "fp8":
            shape.update(granularity="block", out_dtype="bfloat16")
        return shape

    return draw


def gemm_spec(op: str, kind: str, *, summary: str, kernel: str, check: dict, keywords: dict | None = None) -> OpSpec:
    return OpSpec(
        name=op, summary=summary, reference=f"kernels.reference.gemm:{op}", kernel=kernel,
        torch=f"kernels.torch_eager:{op}", outputs=("y",),
        build=lambda shape, device="cpu", seed=0: _gemm().build_gemm(op, kind, shape, device, seed),
        call=lambda fn, inputs: _gemm().gemm_call(fn, inputs),
        tolerance=lambda inputs, expected: _gemm().gemm_tolerance(kind, inputs, expected),
        cost=lambda shape: _gemm().gemm_cost(kind, shape),
        cases=lambda: _gemm().gemm_cases(op, kind),
        features=lambda args, kwargs: _gemm().gemm_features(args, kwargs),
        check=check, goals=dict(MXFP4_GOAL if kind == "mxfp4" else GEMM_GOAL), full_size_count=True, shape=GEMM_SHAPE,
        full_inputs=lambda shape, big, stride0: _gemm().gemm_full_inputs(kind, shape, big, stride0),
        medium_shape=medium_shape, capped_scaling="k_by_launch", count_cap=f"K <= {GEMM_K_CAP}",
        row_shape=lambda shape: _gemm().gemm_row_shape(shape), style=STYLE[kind],
        launch_cases={"": lambda device: _gemm().gemm_launch_case(kind, device)},
        out_dtypes=_out_dtypes, draw=_draw(kind), diagnose=diagnose,
        # the int4, fp8 and mxfp4 launchers' split-K plan counts the GPU's SMs (the dense one does not split)
        plan=(lambda gpu: {"num_sms": gpu.sms}) if kind in ("int4", "fp8", "mxfp4") else None,
        invariance=(Invariance(f"{op} row alone vs batch", "kernels.testing.invariance:gemm_row_alone_vs_batch",
                               args=(("kind", kind),)),
                    Invariance(f"{op} row order within expert",
                               "kernels.testing.invariance:gemm_row_order_within_expert", args=(("kind", kind),))),
        keywords={"out_dtype": "",
                  "batch_invariant": "changes bits only, within tolerance (its own properties: test_invariance.py)",
                  **(keywords or {})})
