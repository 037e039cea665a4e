"""Probes for the first run on a GPU (``perf/gpu_validate.sh``); each prints JSON on stdout.

    python -m perf.gpu_probe env        # versions, GPU, driver, host, and which spec slug the report will use
    python -m perf.gpu_probe slug       # just that slug (exit 3 when no spec fits: the report is then skipped)
    python -m perf.gpu_probe bandwidth  # device-to-device copy GB/s and bf16 matmul TFLOP/s (CUDA events)
    python -m perf.gpu_probe graphs     # every op's launch case captured in a CUDA graph, replayed, vs eager

``env`` works anywhere (it records "no CUDA device"); the others need a CUDA GPU with compiled Triton kernels
and exit 2 with one line saying so elsewhere. ``graphs`` goes through ``correctness.launch_cases`` (one small
call of every public op of ``kernels.triton``, ``validate=False`` with the host hints a caller prepares) and
prints one JSON line per case as it finishes, so a run cut off by a time box keeps what it did.

Slug: ``roofline.specs.match_name`` on the device name; a GPU the table does not know gets the spec of the
same compute capability with the nearest SM count (said in ``slug_note``), or none (exit 3 from ``slug``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata

from kernels.ops import registry
from roofline.specs import all_specs, match_name

NO_GPU = 2
NO_SLUG = 3


class NoGpu(RuntimeError):
    pass


def _torch_cuda():
    import torch  # deferred: a probe reports a missing library instead of failing to import

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise NoGpu("TRITON_INTERPRET is set: the GPU probes need compiled kernels (unset it)")
    if not torch.cuda.is_available():
        raise NoGpu("no CUDA device (torch.cuda.is_available() is False): the GPU probes only run on a GPU")
    return torch


# ---------------------------------------------------------------------------------------------------- env

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed: {exc}"
    return (p.stdout.strip() or p.stderr.strip())[:4000]


def slug_for(name: str, capability: tuple[int, int], sms: int) -> tuple[str | None, str]:
    """(spec slug, how it was chosen) for a CUDA device."""
    spec = match_name(name)
    if spec is not None:
        return spec.slug, f"matched {name!r}"
    cc = capability[0] * 10 + capability[1]
    same = [s for s in all_specs().values() if s.compute_capability == cc]
    if not same:
        return None, (f"{name!r} (sm_{cc}) is not in roofline/specs.py and no spec has its compute capability: "
                      "add it with SERVEKERNELS_GPU_SPECS (see roofline/specs.py)")
    near = min(same, key=lambda s: (abs(s.sms - sms), s.slug))
    return near.slug, (f"{name!r} is not in roofline/specs.py: NEAREST spec {near.slug} (same sm_{cc}, "
                       f"{near.sms} SMs vs {sms}); its ceilings are not this GPU's")


def env() -> dict:
    import numpy  # deferred: a probe reports a missing library instead of failing to import
    import torch  # deferred: a probe reports a missing library instead of failing to import

    d = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
         "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
         "numpy": numpy.__version__, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import triton  # deferred: a probe reports a missing library instead of failing to import

        d["triton"] = triton.__version__
    except ImportError as exc:
        d["triton"] = f"not importable: {exc}"
    d["packages"] = {p: _version(p) for p in ("pytest", "hypothesis", "matplotlib", "pytest-xdist",
                                              "pytest-benchmark", "asv", "nvtx", "vllm")}
    d["tools"] = {t: shutil.which(t) for t in ("nvidia-smi", "nsys", "asv", "git")}
    d["commit"] = _run(["git", "rev-parse", "HEAD"])
    try:
        with open("/proc/cpuinfo") as f:
            d["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        d["cpu"] = None
    d["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET")
    d["cuda"] = bool(torch.cuda.is_available())
    if not d["cuda"]:
        d["gpu"], d["slug"], d["slug_note"] = None, None, "no CUDA device"
        return d
    p = torch.cuda.get_device_properties(0)
    d["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "capability": list(torch.cuda.get_device_capability(0)), "sms": p.multi_processor_count,
                "memory_bytes": p.total_memory, "l2_bytes": getattr(p, "L2_cache_size", None)}
    d["slug"], d["slug_note"] = slug_for(d["gpu"]["name"], tuple(d["gpu"]["capability"]), d["gpu"]["sms"])
    d["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,"
                            "power.limit,temperature.gpu,utilization.gpu", "--format=csv"])
    return d


def slug() -> int:
    torch = _torch_cuda()
    p = torch.cuda.get_device_properties(0)
    s, note = slug_for(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), p.multi_processor_count)
    print(note, file=sys.stderr)
    if s is None:
        return NO_SLUG
    print(s)
    return 0


# ----------------------------------------------------------------------------------------------- bandwidth

def _event_times_ms(torch, fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def bandwidth(copy_bytes: int = 1 << 30, matmul_sizes=(4096, 8192), reps: int = 20) -> dict:
    """Copy: ``dst.copy_(src)`` of ``copy_bytes`` (far past L2), GB/s counting the read and the write
    (2 x bytes / time, the convention of STREAM's copy). Matmul: bf16 ``a @ b`` square, 2 n^3 FLOP / time.
    Medians over ``reps`` timed calls after a warm-up, each timed alone with CUDA events."""
    torch = _torch_cuda()

    dev = torch.device("cuda")
    p = torch.cuda.get_device_properties(0)
    s, note = slug_for(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), p.multi_processor_count)
    spec = all_specs().get(s) if s else None
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=dev).fill_(7)
    dst = torch.empty_like(src)
    ms = _event_times_ms(torch, lambda: dst.copy_(src), 3, reps)
    if not torch.equal(dst[:: 1 << 20], src[:: 1 << 20]):
        raise RuntimeError("copy probe: the destination does not hold the source")
    med = statistics.median(ms)
    out = {"gpu": torch.cuda.get_device_name(0), "spec": s, "spec_note": note,
           "copy": {"bytes": copy_bytes, "median_ms": med, "min_ms": min(ms), "reps": reps,
                    "gb_per_s": 2 * copy_bytes / (med * 1e-3) / 1e9,
                    "convention": "2 x bytes (read + write) / median time"}}
    if spec:
        out["copy"]["fraction_of_spec_hbm"] = out["copy"]["gb_per_s"] * 1e9 / spec.hbm_bytes_per_s
    del src, dst
    out["matmul_bf16"] = []
    for n in matmul_sizes:
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn((n, n), generator=g, device=dev, dtype=torch.bfloat16)
        b = torch.randn((n, n), generator=g, device=dev, dtype=torch.bfloat16)
        ms = _event_times_ms(torch, lambda: a @ b, 5, reps)
        med = statistics.median(ms)
        row = {"n": n, "median_ms": med, "min_ms": min(ms), "tflop_per_s": 2 * n ** 3 / (med * 1e-3) / 1e12}
        if spec:
            row["fraction_of_spec_bf16"] = row["tflop_per_s"] * 1e12 / spec.peak("bf16")
        out["matmul_bf16"].append(row)
        del a, b
    torch.cuda.empty_cache()
    return out


# -------------------------------------------------------------------------------------------------- graphs

def _bits(out) -> list:
    """Every tensor of an op's result as raw bytes (NaN compares by its bits; Int4/Fp8 weights by field)."""
    import torch  # deferred: a probe reports a missing library instead of failing to import

    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        if isinstance(o, torch.Tensor):
            flat.append(o)
        else:  # a quantized weight dataclass
            flat += [v for v in vars(o).values() if isinstance(v, torch.Tensor)]
    return [t.contiguous().view(torch.uint8).clone() for t in flat]


def graph_case(torch, T, case: str, build) -> dict:
    """Capture one op's ``validate=False`` call in a CUDA graph, replay it, and compare bitwise with eager."""
    t0 = time.perf_counter()
    op, args, kwargs, hints = build("cuda")
    fn = getattr(T, op)
    row = {"case": case, "op": op, "captured": False, "replay_equals_eager": False}

    def call():
        return fn(*args, **kwargs, **hints, validate=False)

    spec = registry().get(op)
    writes = spec.writes_args if spec else ()  # arguments it writes in place: reset them before each run

    def reset():
        for i in writes:
            args[i].zero_()

    eager = _bits(call())  # compiles outside the capture
    torch.cuda.synchronize()
    reset()
    stream = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs' documentation asks
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    row["captured"] = True
    reset()
    graph.replay()
    torch.cuda.synchronize()
    got = _bits(captured)
    row["replay_equals_eager"] = len(got) == len(eager) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, eager))
    # host cost of one launch: eager call vs graph replay (both synchronised, median of 20)
    row["eager_call_us"] = _host_us(torch, lambda: (reset(), call()))
    row["graph_replay_us"] = _host_us(torch, lambda: (reset(), graph.replay()))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _host_us(torch, fn, reps: int = 20) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def graphs(cases=None) -> int:
    torch = _torch_cuda()
    import kernels.triton as T  # deferred: imports triton; a probe reports a missing library
    from correctness.launch_cases import CASES  # deferred: imports triton; a probe reports a missing library

    bad = 0
    for case in cases or sorted(CASES):
        try:
            row = graph_case(torch, T, case, CASES[case])
        except Exception as exc:  # one op failing to capture is a finding: record it and go on
            row = {"case": case, "captured": False, "replay_equals_eager": False,
                   "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        bad += not row["replay_equals_eager"]
        print(json.dumps(row), flush=True)
    print(f"graphs: {len(cases or CASES) - bad} of {len(cases or CASES)} cases capture and replay to the eager "
          "bits", file=sys.stderr)
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.gpu_probe", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("env", "slug", "bandwidth", "graphs"))
    ap.add_argument("--case", action="append", help="graphs: only this launch case (repeatable)")
    args = ap.parse_args(argv)
    try:
        if args.what == "env":
            print(json.dumps(env(), indent=1))
            return 0
        if args.what == "slug":
            return slug()
        if args.what == "bandwidth":
            print(json.dumps(bandwidth(), indent=1))
            return 0
        return graphs(args.case)
    except NoGpu as exc:
        print(f"gpu_probe {args.what}: {exc}", file=sys.stderr)
        return NO_GPU


if __name__ == "__main__":
    raise SystemExit(main())
