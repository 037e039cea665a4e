"""The base of the FlashInfer-Trace family adapters: the ``Family`` interface and the conversions they share."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

from kernels.ops import Inputs, OpSpec
from servekernels.trace.schema import Definition

CONTROL = ("return_lse", "num_splits", "split_size", "batch_invariant", "validate")  # no effect on the math
LN2 = math.log(2.0)


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")



def csr_from_block_table(block_table, seq_lens, page_size: int, last_page_len: bool) -> dict:
    """Our ``(block_table, seq_lens)`` as FlashInfer's CSR page list: ``kv_indptr``, ``kv_indices`` and, where
    the definition takes it (``last_page_len``), ``kv_last_page_len``."""
    import torch  # deferred: the trace package's schema and coverage load without torch

    lens = seq_lens.cpu().long()
    pages = (lens + page_size - 1) // page_size
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(pages, 0)
    indices = torch.cat([block_table[i, :int(n)].cpu() for i, n in enumerate(pages)] or
                        [torch.zeros(0, dtype=torch.int32)]).to(torch.int32)
    out = {"kv_indptr": indptr, "kv_indices": indices}
    if last_page_len:
        out["kv_last_page_len"] = torch.where(lens > 0, lens - (pages - 1) * page_size, 0).to(torch.int32)
    return out


def block_table_from_csr(named: dict, page_size: int):
    """FlashInfer's CSR page list (``kv_indptr``, ``kv_indices``, optional ``kv_last_page_len``) as our
    ``(block_table int32 [num_seqs, max_pages] padded with -1, seq_lens int32)``; without ``kv_last_page_len``
    every sequence is whole pages."""
    import torch  # deferred: the trace package's schema and coverage load without torch

    indptr = named["kv_indptr"].cpu().long()
    nseq = len(indptr) - 1
    pages = indptr[1:] - indptr[:-1]
    last = named.get("kv_last_page_len")
    last = torch.full((nseq,), page_size) if last is None else last.cpu().long()
    lens = torch.where(pages > 0, (pages - 1) * page_size + last, 0).to(torch.int32)
    table = torch.full((nseq, max(int(pages.max()) if nseq else 0, 1)), -1, dtype=torch.int32)
    idx = named["kv_indices"].cpu().to(torch.int32)
    for i in range(nseq):
        table[i, :int(pages[i])] = idx[int(indptr[i]):int(indptr[i + 1])]
    return table, lens


@dataclasses.dataclass(frozen=True)
class Template:
    """A FlashInfer trace template its adapter's family matches (the second oracle, ``correctness/test_trace.py``):
    ``flashinfer.trace.templates.<module>.<attr>``, the small sizes its ``init`` takes, and the inputs its
    ``reference`` takes, by the Definition's names (``Family.template_named`` maps ``init``'s output to them;
    empty: all of ``init``'s, by keyword). ``agreement``: "store" (the template's reference is the contract's
    math, equal to ours within one rounding of its stored output) or "contract" (it computes the same function
    with a rounding the contract places elsewhere, e.g. an intermediate it does not quantize: equal to ours
    within the op's own per-element tolerance, the worst error printed as a finding)."""
    module: str
    attr: str
    sizes: dict
    ref_inputs: tuple[str, ...]
    agreement: str = "store"


class Family:
    name = ""
    op = ""
    # the published families it judges: flashinfer-bench definition families and FlashInfer template prefixes
    # (what ``trace coverage`` counts)
    published: tuple[str, ...] = ()
    templates: tuple[Template, ...] = ()  # FlashInfer's templates for it, checked against our reference
    # its outputs are random draws (a sampler owning its RNG): ``evaluate`` judges a workload statistically, in
    # place of the judge's per-element comparison, and the per-element reference tests do not apply
    draws = False

    def evaluate(self, spec, definition, guarded, inputs) -> tuple[str, str, dict | None]:
        """``(status, log, correctness)`` of one workload for a family that ``draws``; ``guarded`` is the
        Solution as a contract implementation under the judge's integrity guard."""
        raise NotImplementedError

    def random_input(self, definition: Definition, name: str, value):
        """A workload's ``random`` input as flashinfer-bench generates it for this family (``value``: the
        judge's seeded ``randn``); the default keeps it."""
        return value

    def fit_draw(self, drawn: dict, base: dict) -> dict:
        """The op's drawn shape (``OpSpec.draw``) in the layout this family's Definitions take (``base``: the
        check case the Definition came from), before ``judge.drawn_shape`` fits its constants: e.g. one sequence
        of the draw, or several queries per sequence. Default: as drawn."""
        return drawn

    def template_named(self, template: Template, init: dict) -> dict:
        """A template's generated inputs (``template.init(...)``) in this family's Definition input names."""
        return dict(init)

    def covers(self, definition: Definition) -> bool:
        raise NotImplementedError

    def why_not(self, definition: Definition) -> str:
        """"" when this family judges ``definition``; else why not."""
        return ""

    def definition_for(self, spec: OpSpec, case: str, inputs: Inputs, expected: dict) -> Definition | None:
        raise NotImplementedError

    def named(self, definition: Definition, inputs: Inputs) -> dict:
        raise NotImplementedError

    def inputs_from(self, definition: Definition, named: dict) -> Inputs:
        raise NotImplementedError

    def implementation(self, definition: Definition, solve: Callable[[dict], dict]) -> Callable:
        """A contract implementation of the op that runs ``solve`` (named inputs -> named outputs, in the
        Definition's terms) and hands back the op's outputs in the contract's terms."""
        raise NotImplementedError

    def theirs(self, definition: Definition, outputs: dict) -> dict:
        """The op's outputs (contract terms) in the Definition's terms, for flashinfer-bench's rule."""
        return outputs




class Base2Lse(Family):
    """An attention family whose Definitions return ``output`` and, optionally, the LSE in base 2 (FlashInfer's),
    where the contract returns ``out`` and the natural-log LSE."""

    def theirs(self, definition, outputs):
        out = dict(outputs)
        if "lse" in out and is_tensor(out["lse"]):
            out["lse"] = out["lse"] / LN2
        return {"output" if k == "out" else k: v for k, v in out.items()}


def contract_attention_outputs(got: dict, return_lse: bool):
    """A Solution's ``{"output", "lse" (base 2)}`` as the contract returns it: ``out``, or ``(out, natural-log
    lse)`` when asked for (a Definition without an LSE output cannot give one)."""
    from kernels.ops import Unsupported

    out, lse = got["output"], got.get("lse")
    if return_lse:
        if lse is None:
            raise Unsupported("return_lse: the definition has no lse output")
        return out, lse * LN2  # base 2 -> natural log
    return out


def require_plain_attention(definition, kw: dict) -> None:
    """Raise ``Unsupported`` when a contract call asks for what a FlashInfer attention Definition does not have
    (a sliding window, a soft-cap, fp8 K/V scales, sinks)."""
    from kernels.ops import Unsupported

    if kw.get("sliding_window") or kw.get("soft_cap") or float(kw.get("k_scale", 1.0)) != 1.0 \
            or float(kw.get("v_scale", 1.0)) != 1.0 or kw.get("sinks") is not None:
        raise Unsupported(f"features: {definition.name} has no window, soft-cap, fp8 scale or sinks")
