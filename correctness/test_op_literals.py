"""A fact about one op lives in its spec (``kernels/ops/<op>.py``), a fact about one implementation in its provider
(``kernels/impls/``): no other library file names an op in a string literal (an ``if op == "paged_decode"``
branch, a per-op table), so adding an op edits no list. Read from the source with ``ast``; docstrings are prose
and do not count, tests and docs may name any op.

``ALLOWED`` names the files that still do, each with the reason; a file that no longer needs its entry fails
too, so the list only shrinks.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kernels.ops import registry

pytestmark = pytest.mark.host_only("reads the source: no kernel")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "roofline", "perf", "servekernels", "engine", "correctness")
HOMES = ("kernels/ops/", "kernels/impls/")  # where facts about an op or an implementation live

ALLOWED = {
    "kernels/torch_eager.py": "the eager provider's module: its __all__ lists the ops it implements",
    "engine/backend.py": "the engine calls the ops it runs by name through a provider (a use, not a per-op fact)",
    "correctness/mutant_catalogue.py": "each mutant's description names the op it breaks (prose, not a table)",
    "kernels/triton/__init__.py": "moe_permute lives in fused_moe's kernel module until it is an op",
    "servekernels/trace/references.py": "the self-contained torch reference bodies exported with each op",
}

# a FlashInfer-Trace adapter module (``servekernels/trace/families/<family>.py``) maps a published family to the
# op it names, as a provider's file names what it implements; the package's shared modules name none
ADAPTER_DIR = "servekernels/trace/families/"
ADAPTER_SHARED = ("__init__.py", "_base.py", "generic.py")


def adapter(rel: str) -> bool:
    return rel.startswith(ADAPTER_DIR) and rel[len(ADAPTER_DIR):] not in ADAPTER_SHARED


# a kernel module named by its op (``kernels/triton/ops/<op>.py``) may name that op (its NVTX range and launch
# recorder key), as a provider's file would; any other op it names is a stray
OWN_OP_DIR = "kernels/triton/ops/"


def own_op(rel: str) -> str | None:
    """The op a file is named by, for a kernel module under ``kernels/triton/ops/``; else None."""
    return rel[len(OWN_OP_DIR):-3] if rel.startswith(OWN_OP_DIR) else None

# files a concurrent change is rewriting (the single provider registry, the check's defences): not judged
# either way until it lands
UNSETTLED: dict[str, str] = {}


def op_literals(path: Path, ops: set[str]) -> list[tuple[int, str]]:
    """``(line, literal)`` of every string constant outside a docstring that names an op as a whole word."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    word = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(ops, key=len, reverse=True)) + r")(?![A-Za-z0-9_])")
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and word.search(node.value)]


def library_files() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            test = path.name.startswith("test_") or path.name == "conftest.py" or rel.startswith(
                "correctness/wrong_impls/")
            if not test and not rel.startswith(HOMES):
                files.append(path)
    return files


def test_the_reader_finds_literals_and_skips_docstrings(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""paged_decode in prose."""\ndef f(op):\n    """merge_states too."""\n'
                   '    return op == "paged_decode" or op.startswith("grouped_gemm") or op == "grouped_gemm_x"\n')
    assert op_literals(src, {"paged_decode", "merge_states", "grouped_gemm"}) == [(4, "paged_decode"),
                                                                                   (4, "grouped_gemm")]


def test_no_op_name_literal_outside_the_specs_and_providers():
    ops = set(registry())
    files = library_files()
    assert len(files) > 50  # the walk found the library
    found = {}
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        hits = op_literals(path, ops - {own_op(rel)})
        if hits:
            found[rel] = hits
    stray = {f: hits for f, hits in found.items() if f not in ALLOWED and f not in UNSETTLED and not adapter(f)}
    assert not stray, "op names outside kernels/ops and kernels/impls (make each a spec field):\n" + "\n".join(
        f"  {f}:{line}: {text!r}" for f, hits in stray.items() for line, text in hits[:5])
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"allowed but no longer naming an op (drop them from ALLOWED): {stale}"
