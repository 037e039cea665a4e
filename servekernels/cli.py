"""``servekernels <command>``: each command lives in its own module with ``add_arguments`` and ``run``.

Only the chosen command's module is imported, to build its options; ``--help`` imports neither torch nor
triton. The Triton interpreter is switched on (when there is no GPU) after the arguments are parsed and before
the command runs. A user's mistake (``UsageError``, or a bad option) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from kernels.runtime import configure_triton
from servekernels.usage import UsageError

COMMANDS = {
    "check": ("servekernels.check", "run every kernel against its float64 reference on realistic cases"),
    "report": ("roofline.report", "roofline report: modeled (no GPU) or measured (GPU) time per kernel"),
    "generate": ("engine.cli", "run the thin serving engine on prompts and print tokens and step stats"),
    "trace": ("servekernels.trace.cli", "FlashInfer-Trace: export our cases, judge Solutions, coverage"),
}


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``prog: error: message (see prog --help)``."""
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None) -> Parser:
    """The parser, with the options of ``command`` only (the others' modules are not imported)."""
    parser = Parser(prog="servekernels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level takes no option values
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2, one line already printed)
        return int(exc.code or 0)

    configure_triton()
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except UsageError as exc:
        print(f"servekernels {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
