"""Profile servekernels kernels with Nsight Systems, NVTX ranges included, and print the NVTX summaries.

Recipe (what this script runs):

    nsys profile -t cuda,nvtx -o OUT --force-overwrite true python -m perf.nsys_profile --workload -k CASE
    nsys stats --report nvtx_sum,nvtx_gpu_proj_sum OUT.nsys-rep

Every launcher is annotated (``kernels.nvtx.annotate``: domain "servekernels", category "kernel"), and the
workload wraps each case in a "bench" range, so ``nvtx_gpu_proj_sum`` gives GPU time per kernel and per case.

    python -m perf.nsys_profile [-k CASE ...] [--out DIR] [--iters N]

Without nsys on PATH, or without a GPU, it exits with status 2 and one line saying so (no traceback).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from kernels import runtime  # its functions are looked up at each call (tests patch them)
from kernels.nvtx import nvtx_range
from roofline import ops
from roofline.catalogue import catalogue

DEFAULT_CASES = ("llama3-8b/decode/b64-ctx4k", "llama3-8b/prefill/full-2k", "mixtral/int4-w13/decode-t16",
                 "mixtral/moe-int4/t16")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m perf.nsys_profile", description=__doc__.splitlines()[0])
    p.add_argument("-k", dest="cases", action="append", help="catalogue case name (repeatable; default: a few)")
    p.add_argument("--out", default="reports/nsys", help="directory for the .nsys-rep and the stats (default %(default)s)")
    p.add_argument("--iters", type=int, default=20, help="calls per case inside the profile (default %(default)s)")
    p.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)  # the child nsys runs
    return p.parse_args(argv)


def workload(args) -> int:
    """Run each case ``iters`` times on the GPU inside NVTX ranges (this is what nsys records)."""
    import torch  # deferred: --help and the stub run load no torch


    by_name = {c.name: c for c in catalogue()}
    for name in args.cases or DEFAULT_CASES:
        case = by_name.get(name)
        if case is None:
            print(f"nsys_profile: unknown case {name!r}", file=sys.stderr)
            return 2
        prep = ops.prepare(case.op, case.shape, "cuda")  # a missing kernel is an error, not a skip
        prep.run()  # compile outside the measured ranges
        torch.cuda.synchronize()
        with nvtx_range(name, "bench"):
            for _ in range(args.iters):
                prep.run()
            torch.cuda.synchronize()
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    if args.workload:
        return workload(args)
    nsys = shutil.which("nsys")
    if nsys is None:
        print("nsys_profile: nsys (Nsight Systems CLI) is not on PATH; install Nsight Systems on a GPU machine. "
              "Recipe: nsys profile -t cuda,nvtx -o prof python -m perf.nsys_profile --workload; "
              "nsys stats --report nvtx_sum,nvtx_gpu_proj_sum prof.nsys-rep", file=sys.stderr)
        return 2

    if not runtime.cuda_available():
        print("nsys_profile: no CUDA GPU here; nsys profiles GPU kernels (the interpreter runs none)",
              file=sys.stderr)
        return 2
    try:
        import nvtx  # noqa: F401
    except ImportError:
        print("nsys_profile: the 'nvtx' package is missing (pip install nvtx): no ranges would be emitted",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    rep = os.path.join(args.out, "servekernels")
    child = [sys.executable, "-m", "perf.nsys_profile", "--workload", "--iters", str(args.iters)]
    for c in args.cases or ():
        child += ["-k", c]
    prof = [nsys, "profile", "-t", "cuda,nvtx", "-o", rep, "--force-overwrite", "true", *child]
    print("$", " ".join(prof), flush=True)
    if subprocess.run(prof).returncode != 0:
        print("nsys_profile: nsys profile failed (see above)", file=sys.stderr)
        return 1
    stats = [nsys, "stats", "--report", "nvtx_sum,nvtx_gpu_proj_sum", "--format", "csv,column",
             "--output", ".,-", rep + ".nsys-rep"]
    print("$", " ".join(stats), flush=True)
    return 0 if subprocess.run(stats).returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
