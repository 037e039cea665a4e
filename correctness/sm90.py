"""Compile a kernel for an H100 (sm_90) down to a cubin with Triton's bundled ptxas, no GPU needed.

Used by the parity tests to prove the launcher's own launch arguments compile for the GPU path (dot shapes,
dtype mixes, loop-carried types, int specialisation): the interpreter lets those through. It must run with the
interpreter off, so tests call ``run_compile_child`` to do it in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                torch.float8_e4m3fn: "fp8e4nv", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8"}


def compile_sm90(kernel, args, meta):
    """Compile ``kernel`` for sm_90 with the signature and specialisations a launch with ``args`` would get."""
    meta = dict(meta)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages") if k in meta}
    signature, constexprs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args[i] if i < len(args) else meta[name]
        if i >= len(args) or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name], constexprs[(i,)] = "constexpr", value  # Triton specialises ints equal to 1
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TRITON_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
        else:
            signature[name] = "fp32"
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options=options)


def run_compile_child(module: str) -> None:
    """Run ``python -m <module> --compile-sm90`` with the interpreter off; fail on any error or crash."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", module, "--compile-sm90"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "compiled" in proc.stdout, proc.stdout
