"""Lazily resolved public names for a package: ``__getattr__ = lazy_names(__name__, {"name": "module"})``.

Importing the package imports none of its modules; ``package.name`` imports ``package.module`` on first use.
A module must not share the name of a function it exports: importing it would set the package attribute to the
module and shadow the function (``correctness/test_public_api.py`` checks this).
"""
from __future__ import annotations

import importlib

from kernels.ops import registry


def op_modules(package: str, helpers: dict[str, str], field: str) -> dict[str, str]:
    """``helpers`` plus every registry op whose spec's ``field`` ("kernel" or "reference", ``"module:attr"``)
    is a module of ``package`` exporting the op under its own name: the package's public-name table."""
    table = dict(helpers)
    for name, spec in registry().items():
        module, _, attr = getattr(spec, field).partition(":")
        if module.startswith(package + ".") and attr == name:
            table[name] = module[len(package) + 1:]
    return table


def lazy_names(package: str, modules: dict[str, str]):
    def __getattr__(name: str):
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{modules[name]}"), name)

    return __getattr__
