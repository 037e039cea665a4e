"""User mistakes on the command line: ``UsageError`` and the checks the commands run before any work.

A command turns the ``ValueError`` a library function raises for bad user input into a ``UsageError`` by
wrapping only the calls that validate that input in ``user_input()``; ``servekernels.cli.main`` prints a
``UsageError`` as one line on stderr and exits 2. Any other exception (a bug) keeps its traceback.
"""
from __future__ import annotations

import contextlib
import os


class UsageError(ValueError):
    """A mistake in what the user asked for (printed as one line, exit code 2)."""


@contextlib.contextmanager
def user_input(options=()):
    """Inside this block a ``ValueError`` is the user's mistake: re-raised as a one-line ``UsageError``.

    A message that starts with ``name:`` where ``name`` is in ``options`` (argparse dests) names the option as
    the user typed it (``max_tokens: ...`` -> ``--max-tokens: ...``)."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as exc:
        msg = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        head, sep, rest = msg.partition(":")
        if sep and head in options:
            msg = f"--{head.replace('_', '-')}:{rest}"
        raise UsageError(msg) from exc


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(option: str, path: str) -> None:
    """``path`` is a writable directory, or can be created (its nearest existing ancestor is one, and creating the
    missing ones works: they are made and removed again, so a parent that cannot be made, e.g. under ``/proc``,
    is found before any work)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option}: {path!r} exists and is not a directory")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise UsageError(f"{option}: cannot create {path!r}: {base!r} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: {base!r} is not writable")
    missing = []  # deepest first
    d = os.path.abspath(path)
    while not os.path.exists(d):
        missing.append(d)
        d = os.path.dirname(d)
    made = []
    try:
        for d in reversed(missing):
            os.mkdir(d)
            made.append(d)
    except OSError as exc:
        raise UsageError(f"{option}: cannot create {path!r}: {exc.strerror or exc}") from exc
    finally:
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError:  # something else wrote into it meanwhile: leave it
                pass


def check_output_file(option: str, path: str) -> None:
    """``path`` can be written as a file: its directory exists and is writable, and it is not a directory."""
    if os.path.isdir(path):
        raise UsageError(f"{option}: {path!r} is a directory, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{option}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{option}: {path!r} is not writable")


def select_names(names: list[str], patterns: list[str] | None, *, exact: bool = False, hint: str = "") -> list[str]:
    """The names ``-k`` selects: those containing any pattern (substring), or equal to one with ``exact``.

    No pattern selects every name. A pattern that selects nothing is a ``UsageError``."""
    if not patterns:
        return list(names)
    for p in patterns:
        if not any((n == p) if exact else (p in n) for n in names):
            how = "named" if exact else "whose name contains"
            raise UsageError(f"-k {p}: no case {how} {p!r}{hint}")
    return [n for n in names if any((n == p) if exact else (p in n) for p in patterns)]
