"""Lazily resolved public names for a package: ``__getattr__ = lazy_names(__name__, {"name": "module"})``.

Importing the package imports none of its modules; ``package.name`` imports ``package.module`` on first use.
The table may be a function that returns it (``op_modules``): it is then built on the first lookup, not when the
package is imported, ``package.__all__`` is its sorted names and ``package._MODULES`` the table.
A module must not share the name of a function it exports: importing it would set the package attribute to the
module and shadow the function (``correctness/test_public_api.py`` checks this).
"""
from __future__ import annotations

import importlib
from typing import Callable

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


def lazy_names(package: str, modules: dict[str, str] | Callable[[], dict[str, str]]):
    built: dict[str, str] = {} if callable(modules) else modules

    def table() -> dict[str, str]:
        if callable(modules) and not built:
            built.update(modules())
        return built

    def __getattr__(name: str):
        if name == "__all__" and callable(modules):
            return sorted(table())
        if name == "_MODULES" and callable(modules):  # the table itself (perf.launch_recorder reads it)
            return dict(table())
        if name not in table():
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{table()[name]}"), name)

    return __getattr__
