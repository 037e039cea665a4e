"""``servekernels <command>``: each command lives in its own module with ``add_arguments`` and ``run``.

The Triton interpreter is switched on (when there is no GPU) before any command module is imported.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "check": ("servekernels.check", "run every kernel against its float64 reference on realistic cases"),
    "report": ("roofline.report", "roofline report: modeled (no GPU) or measured (GPU) time per kernel"),
    "generate": ("engine.cli", "run the thin serving engine on prompts and print tokens and step stats"),
}


def main(argv: list[str] | None = None) -> int:
    from kernels.runtime import configure_triton

    configure_triton()
    parser = argparse.ArgumentParser(prog="servekernels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            modules[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a command whose module has not landed yet
            if exc.name is None or not module.startswith(exc.name):
                raise
            p.set_defaults(missing=f"{name}: not available in this build ({exc})")
            continue
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if getattr(args, "missing", None):
        print(args.missing, file=sys.stderr)
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
