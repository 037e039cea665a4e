"""``servekernels trace export DIR``: the registry as a FlashInfer-Trace dataset.

For every op of the registry and every check case: the case's inputs (``spec.build``: poisoned unowned pages,
loud newest keys, ragged and empty sequences, skewed routing...) go through each family the case fits
(``families.family_for_inputs``: flashinfer-bench's own format where one matches, always the generic one),
giving one Definition per family and one Workload per (Definition, case), its tensors in a safetensors blob.
Layout (flashinfer-bench's ``TraceSet``): ``definitions/<op_type>/<name>.json``,
``workloads/<op_type>/<name>.jsonl`` (workload traces), ``blob/workloads/<op_type>/<name>/<name>_<uuid>.safetensors``.
A workload whose expected outputs hold a non-finite value (an empty sequence's LSE is -inf, a NaN row is the
contract's answer) says in its ``description`` that flashinfer-bench's evaluator cannot grade it.
"""
from __future__ import annotations

import json
import uuid as uuidlib
from pathlib import Path

from servekernels.trace.schema import Definition, InputSpec, Trace, Workload, dumps

NAMESPACE = uuidlib.UUID("6f1c4a52-7a43-4b0e-9a43-5e7a1c0de001")


def workload_uuid(definition: str, op: str, case: str) -> str:
    """Deterministic: the judge recognises our own workloads in any directory by it."""
    return str(uuidlib.uuid5(NAMESPACE, f"{definition}/{op}/{case}"))


def our_cases(spec):
    """``[(case name, shape)]``: the op's check cases (interpreter-sized, every feature they name active)."""
    return list(spec.check.items())


def describe(spec, case: str, expected: dict, theirs: dict) -> str:
    import numpy as np

    text = (f"servekernels {spec.name} check case {case}: the suite's adversarial inputs (memory no sequence "
            "owns is NaN-poisoned, lengths ragged, features the case names active).")
    bad = []
    for name, value in expected.items():
        arr = np.asarray(value, dtype=np.float64) if not hasattr(value, "detach") else value.detach().double().numpy()
        n_inf, n_nan = int(np.isinf(arr).sum()), int(np.isnan(arr).sum())
        if n_inf or n_nan:
            label = theirs.get(name, name)
            what = []
            if n_inf:
                what.append(f"{n_inf} infinite (an empty sequence's LSE is -inf)")
            if n_nan:
                what.append(f"{n_nan} NaN (the contract's answer where the input holds NaN)")
            bad.append(f"{label}: {' and '.join(what)}")
    if bad:
        text += (" flashinfer-bench's evaluator cannot grade this workload: its expected outputs hold non-finite "
                 "values (" + "; ".join(bad) + ") and it fails any non-finite output; `servekernels trace judge` "
                 "grades it.")
    return text


def export(root, ops=None, log=print) -> dict:
    """Write the dataset under ``root``; returns ``{"definitions": n, "workloads": n, "skipped": [...]}``."""
    import torch
    from safetensors.torch import save_file

    from kernels.ops import registry
    from kernels.testing.judge import expected_outputs
    from servekernels.trace.families import family_for_inputs, is_tensor

    root = Path(root)
    written: dict[str, tuple[Definition, list]] = {}
    skipped = []
    for op, spec in registry().items():
        if ops and op not in ops:
            continue
        for case, shape in our_cases(spec):
            inputs = spec.build(shape, "cpu", 0)
            expected = expected_outputs(spec, inputs)
            for fam in family_for_inputs(spec, inputs):
                try:
                    d = fam.definition_for(spec, case, inputs, expected)
                except Exception as exc:  # a case the family cannot express is listed, never silently dropped
                    skipped.append(f"{op} {case} via {fam.name or fam.op}: {type(exc).__name__}: {exc}")
                    continue
                if d is None:
                    continue
                if d.name in written and dumps(written[d.name][0]) != dumps(d):
                    skipped.append(f"{op} {case}: definition {d.name} differs from an earlier case's; kept the first")
                    continue
                named = fam.named(d, inputs)
                uid = workload_uuid(d.name, op, case)
                blob_rel = f"blob/workloads/{d.op_type}/{d.name}/{d.name}_{uid}.safetensors"
                tensors, specs = {}, {}
                for name in d.inputs:
                    value = named.get(name)
                    if is_tensor(value):
                        tensors[name] = value.detach().cpu().contiguous()
                        specs[name] = InputSpec("safetensors", path=f"./{blob_rel}", tensor_key=name)
                    elif value is not None:
                        specs[name] = InputSpec("scalar", value=value)
                axes = {}
                for name, ts in d.inputs.items():
                    if ts.shape is None or name not in tensors:
                        continue
                    for ax, size in zip(ts.shape, tensors[name].shape):
                        if d.axes[ax].type == "var":
                            axes.setdefault(ax, int(size))
                blob = root / blob_rel
                blob.parent.mkdir(parents=True, exist_ok=True)
                save_file(tensors, str(blob))
                theirs_names = {"out": "output"} if fam.name.startswith(("gqa", "rmsnorm")) else {}
                w = Workload(axes, specs, uid, {"description": describe(spec, case, expected, theirs_names)})
                written.setdefault(d.name, (d, []))[1].append(Trace(d.name, w))
    for name, (d, traces) in written.items():
        path = root / "definitions" / d.op_type / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json.loads(dumps(d)), indent=2) + "\n")
        wpath = root / "workloads" / d.op_type / f"{name}.jsonl"
        wpath.parent.mkdir(parents=True, exist_ok=True)
        wpath.write_text("".join(json.dumps(_finite(t.to_json(strict=False))) + "\n" for t in traces))
    n_w = sum(len(t) for _, t in written.values())
    log(f"trace export: {len(written)} definitions, {n_w} workloads under {root}")
    for s in skipped:
        log(f"  skipped: {s}")
    return {"definitions": len(written), "workloads": n_w, "skipped": skipped}


def _finite(x):
    from servekernels.trace.schema import _finite as f

    return f(x)


