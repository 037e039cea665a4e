"""Host cost of a measured report's float64 work, per ``--quick`` case at full size: building the inputs, the
reference and the per-element tolerance (the three host steps ``roofline.report.measure_case`` takes before
and after timing). CPU time of this process, one thread, so a busy machine inflates it less than wall time.

    PYTHONPATH=. python -m perf.reference_cost [substring ...]

Built on the CPU here; on a GPU the GEMM/MoE weight stacks are drawn and quantized on the device
(``master_weights``, ``quantize_on_device``), so their build time here is an upper bound of the host's share.
"""
from __future__ import annotations

import sys
import time

from kernels.ops import get
from kernels.runtime import configure_triton
from kernels.testing.judge import expected_outputs
from roofline.catalogue import catalogue

configure_triton()


def main(argv: list[str]) -> int:
    import torch  # deferred: --help loads no torch


    torch.set_num_threads(1)
    print("| case | build (s) | reference (s) | tolerance (s) |\n| --- | ---: | ---: | ---: |")
    total = [0.0, 0.0, 0.0]
    for case in catalogue():
        if not case.quick or (argv and not any(s in case.name for s in argv)):
            continue
        spec = get(case.op)
        t0 = time.process_time()
        inputs = spec.build(case.shape, "cpu", 0)
        t1 = time.process_time()
        expected = expected_outputs(spec, inputs)
        t2 = time.process_time()
        spec.tolerance(inputs, expected)
        t3 = time.process_time()
        steps = (t1 - t0, t2 - t1, t3 - t2)
        total = [a + b for a, b in zip(total, steps)]
        print(f"| {case.name} | " + " | ".join(f"{s:.1f}" for s in steps) + " |", flush=True)
        del inputs, expected
    print("| total | " + " | ".join(f"{s:.0f}" for s in total) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
