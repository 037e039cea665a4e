"""Helpers shared by the asv benchmarks; importing this module switches the Triton interpreter on where there is
no GPU, before anything imports triton (building the case list below imports the kernels), as conftest.py and
the CLI do."""
from __future__ import annotations

from kernels.runtime import configure_triton

BACKEND = configure_triton()  # must run before anything imports triton

def _tracked() -> tuple[str, ...]:
    """The catalogue cases asv tracks: the quick set plus those their op spec marks ``tracked`` (deterministic
    under the interpreter, so a traffic regression shows as a step in asv's graph of that case)."""
    from roofline.catalogue import catalogue  # deferred: asv imports to list; setup loads

    return tuple(c.name for c in catalogue() if c.quick or c.tracked)


def _ops() -> tuple[str, ...]:
    from kernels.ops import registry  # deferred: asv imports to list; setup loads

    return tuple(registry())


TRACKED_CASES = _tracked()
REFERENCE_OPS = _ops()


def case(name: str):
    from roofline.catalogue import catalogue  # deferred: asv imports to list; setup loads

    for c in catalogue():
        if c.name == name:
            return c
    raise NotImplementedError(f"{name}: not in the catalogue of this commit")


def first_case(op: str):
    from roofline.catalogue import catalogue  # deferred: asv imports to list; setup loads

    cases = [c for c in catalogue() if c.op == op]
    if not cases:
        raise NotImplementedError(f"{op}: no catalogue case in this commit")
    return next((c for c in cases if c.quick), cases[0])


def prepared(op: str, shape: dict, device: str):
    """``roofline.ops.prepare`` (the op spec's inputs, this project's kernel, the registry's judge)."""
    from roofline import ops  # deferred: asv imports to list; setup loads

    return ops.prepare(op, shape, device)


def has_gpu() -> bool:
    from kernels.runtime import cuda_available, interpreter_enabled  # deferred: asv imports to list; setup loads

    return cuda_available() and not interpreter_enabled()
