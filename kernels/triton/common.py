"""Pieces every Triton kernel here shares: the matmul helper, the interpreter flag, launcher checks.

Kernels call plain ``tl.dot`` (through ``mma``) and store with plain ``.to(dtype)``: under the interpreter,
``kernels.interpreter_fixes`` (installed by ``check_launch_device`` and ``kernels.runtime.configure_triton``)
makes bfloat16 dots and casts compute what a GPU computes, for these kernels and everyone else's.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.validate import require, scalar

INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


@triton.jit
def mma(a, b, acc):
    """``acc + a @ b`` with float32 accumulation; float32 operands use IEEE fp32 (no tf32) for parity."""
    if a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


def check_launch_device(name: str, t) -> None:
    """A kernel runs on CUDA tensors, or on CPU tensors under the interpreter; anything else is a ValueError."""
    if t.device.type == "cuda":
        require(not bool(INTERPRET), name, "is a CUDA tensor but TRITON_INTERPRET=1 is set")
        return
    require(t.device.type == "cpu" and bool(INTERPRET), name,
            f"is on {t.device}; Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 "
            "(kernels.runtime.configure_triton() sets it when there is no GPU)")
    from kernels import interpreter_fixes  # imports triton's interpreter, which only an interpreted launch needs

    interpreter_fixes.install()


DEFAULT_NUM_SMS = 132  # an H100 SXM (an H200 too); used when there is no GPU to ask


def device_sms(device, num_sms) -> int:
    """The SM count a launch plan targets: ``num_sms`` when given (an int >= 1, else a ValueError naming it), else
    the CUDA device's, else ``DEFAULT_NUM_SMS`` (the interpreter's CPU)."""
    if num_sms is not None:
        require(isinstance(num_sms, int) and not isinstance(num_sms, bool) and num_sms >= 1, "num_sms",
                f"must be None or an int >= 1, got {num_sms!r}")
        return int(num_sms)
    if getattr(device, "type", None) == "cuda":

        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def scale_operand(s, like, name: str, validate: bool = True):
    """A k/v scale as kernel operands ``(host factor, pointer, on_device)``.

    A Python number is passed by value (the pointer is ``like``, a placeholder the kernel never reads). A
    1-element tensor on ``like``'s device is read by the kernel from device memory: no host copy, so the call
    can be captured in a CUDA graph and a scale updated in place is seen by every replay. A tensor on another
    device is read on the host when ``validate`` (one copy, as a host number), and is a ValueError otherwise.
    """
    if not hasattr(s, "numel"):
        return scalar(s, name), like, False
    if s.device == like.device:
        return 1.0, s.reshape(1), True
    require(validate, name, f"is on {s.device}, the kernel runs on {like.device}: with validate=False a tensor "
            "scale must be on the kernel's device (reading it elsewhere would need a device-to-host copy)")
    return scalar(s, name), like, False


def device_capability(device) -> tuple[int, int] | None:
    """The CUDA compute capability of ``device``, or None for a non-CUDA device (the interpreter's CPU)."""
    if getattr(device, "type", None) != "cuda":
        return None

    return tuple(torch.cuda.get_device_capability(device))


FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs whose tensor cores and cvt take float8 e4m3


def check_fp8_supported(name: str, device) -> None:
    """float8_e4m3fn kernels need compute capability >= 8.9: below it Triton cannot compile them (fp8e4nv), so
    the launcher raises a ValueError naming the fp8 argument and the capability, before anything launches."""
    cap = device_capability(device)
    if cap is not None and tuple(cap) < FP8_MIN_CAPABILITY:
        raise ValueError(f"{name}: float8_e4m3fn needs a GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
                         f"{device} has {cap[0]}.{cap[1]}")
