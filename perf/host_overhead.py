"""Host time of one validate=True and one validate=False call per catalogue case (kernels replaced by a
recorder), next to the modeled kernel time t_roof on h100-sxm and h200. Host times: this CPU; kernel: modeled."""
from __future__ import annotations
import statistics, time
from kernels.runtime import configure_triton
configure_triton()
import torch
import kernels.triton as T
from kernels.ops import get
from perf.launch_recorder import recorded_launches
from roofline import catalogue as CAT
from roofline.lazy_inputs import lazy_inputs
from roofline.specs import get_spec

def build(case):
    """The case's full-size inputs (``roofline.lazy_inputs``: real but uninitialised tensors, so validation reads
    real memory) and the host hints its ``validate=False`` call takes (its op spec's ``hints``)."""
    args, kw = lazy_inputs(case, stride0=False)
    return args, kw, get(case.op).hints(args, kw)

def host_us(fn, reps=15):
    fn(); fn()
    xs = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e6

def main():
    torch.set_num_threads(1)
    h100, h200 = get_spec("h100-sxm"), get_spec("h200")
    print("| op | case | host, validate=True (us) | host, validate=False (us) | t_roof h100-sxm (us, modeled) | t_roof h200 (us, modeled) | validated host / t_roof h200 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for c in CAT.catalogue():
        args, kw, hints = build(c)
        fn = getattr(T, c.op)
        with recorded_launches():
            tv = host_us(lambda: fn(*args, **kw))
            tf = host_us(lambda: fn(*args, **kw, **hints, validate=False))
        cost = CAT.case_cost(c.op, c.shape)
        r1, r2 = cost.roof(h100)["t_roof_s"] * 1e6, cost.roof(h200)["t_roof_s"] * 1e6
        print(f"| {c.op} | {c.name} | {tv:.0f} | {tf:.0f} | {r1:.1f} | {r2:.1f} | {100 * tv / r2:.0f} % |", flush=True)

if __name__ == "__main__":
    main()
