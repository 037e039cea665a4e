"""Where the Triton kernels run: a CUDA GPU, or the CPU through Triton's interpreter.

``configure_triton()`` must run before ``triton`` is first imported (the interpreter flag is read at import).
The CLI and the root ``conftest.py`` call it; library code never flips it behind a user's back. With the
interpreter on it also installs ``kernels.interpreter_fixes`` (bfloat16 ``tl.dot`` and casts as a GPU computes
them, for every kernel the process runs).
"""
from __future__ import annotations

import os
import shutil
import sys


def cuda_available() -> bool:
    """True when torch sees a CUDA device. Imports torch (not triton)."""
    import torch  # deferred: configure_triton runs before torch and triton load

    return bool(torch.cuda.is_available())


def configure_triton() -> str:
    """Turn the Triton interpreter on when there is no GPU. Returns "cuda" or "interpreter".

    An explicit ``TRITON_INTERPRET`` set by the user is respected either way. Raises ``ValueError`` when the
    interpreter is needed but triton was already imported (kernels decorated then would target a GPU). Under the
    interpreter, installs ``kernels.interpreter_fixes`` (a RuntimeError naming a triton it cannot patch).
    """
    if "TRITON_INTERPRET" not in os.environ and not cuda_available():
        if "triton" in sys.modules:
            raise ValueError("configure_triton(): called after triton was imported, too late to switch on the "
                             "interpreter; call it before importing triton (or set TRITON_INTERPRET=1)")
        os.environ["TRITON_INTERPRET"] = "1"
    if not interpreter_enabled():
        return "cuda"
    from kernels import interpreter_fixes  # imports triton, which must follow the switch above

    interpreter_fixes.install()
    return "interpreter"


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_device() -> str:
    """The torch device kernels run on: "cuda" on a GPU, "cpu" under the interpreter."""
    return "cpu" if interpreter_enabled() or not cuda_available() else "cuda"


def machine_label() -> str:
    """How figures from this process must be labelled: the GPU name, or "interpreter (CPU)"."""
    if interpreter_enabled() or not cuda_available():
        return "interpreter (CPU, no GPU)"
    import torch  # deferred: configure_triton runs before torch and triton load

    return torch.cuda.get_device_name()


def nsys_available() -> bool:
    return shutil.which("nsys") is not None
