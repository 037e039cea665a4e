"""Compile-time metrics of the kernels a launcher really picks for a case, for a GPU's architecture, no GPU needed.

Entry point: ``case_compile_metrics(case, spec)`` (a ``kernels.ops.Case`` and a ``roofline.specs.GpuSpec``)
returns ``{"arch": "sm_90", "launches": [...], "main": {...}}``. Each launch (one per kernel launch the op makes
at the case's full shape, in launch order) holds: ``kernel``, ``config`` (the constexpr tile sizes and options the
launcher chose), ``programs``, ``regs`` (registers per thread), ``spill_bytes`` (spill stores + loads),
``smem_bytes``, ``num_warps``, ``resident_blocks`` (per SM) and the limit that decides it, ``waves``,
``wave_efficiency`` (``programs / (waves * resident_blocks * sms)``), ``mma`` (matrix instructions in the code:
"wgmma", "mma.sync" or "none") and ``error`` (a compile failure, recorded as a finding). ``main`` is the launch
that carries the op's math (see ``main_launch``).

How:

1. ``case_launches(case, spec)`` runs the public launcher under the Triton interpreter inside
   ``capture_launches``, which replaces the interpreter's grid executor with a recorder: the launcher plans as
   for real (tile table, split plan, grid) and every launch's kernel, argument types, specialisations and
   options are kept; no kernel body runs. No launch's grid depends on a kernel's output (fused_moe's expert
   offsets come from a torch sort on the host); fresh workspaces read as zeros. Full-shape inputs are stride-0
   expansions (``roofline.lazy_inputs``).
   Ops whose launch plan depends on the GPU get ``OpSpec.plan(spec)`` (the SM count, decode's programs per SM),
   so their KV splits and split-K are that GPU's.
2. Every distinct configuration is compiled by Triton (interpreter off, in a subprocess) for the spec's compute
   capability with its bundled ptxas, whose ``-v`` log gives registers and spills; Triton's metadata gives
   shared memory and warps, the PTX text the matrix instruction family. Integer arguments equal to 1 become
   constexprs and pointers and integers divisible by 16 get Triton's divisibility hint, as in a real launch.
3. Results are cached on disk (``$SERVEKERNELS_COMPILE_CACHE``, default ``~/.cache/servekernels/compile``), one
   JSON file per sha256 of (kernel module source, ``kernels/triton/common.py``, this file, triton version, arch,
   signature, constexprs, hints, options): a report recompiles only what changed.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from kernels import runtime
from kernels.ops import get
from roofline import ops
from roofline.lazy_inputs import lazy_inputs
from roofline.occupancy import resident_blocks, waves

ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "SERVEKERNELS_COMPILE_CACHE"
TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
                "float8_e4m3fn": "fp8e4nv", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
                "uint8": "u8", "bool": "i1"}
OPTION_NAMES = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "servekernels" / "compile")


# ------------------------------------------------------------------------------------------------ capture

def _describe(fn, args, kwargs) -> dict:
    """One launch as JSON: the kernel's module and name, the signature Triton would derive, constexprs,
    divisibility hints and options."""
    import torch  # deferred: the report's modules load without torch (``--help``); a launch has torch loaded

    names = list(inspect.signature(fn).parameters)
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: kwargs[k] for k in OPTION_NAMES if k in kwargs}
    annotations = {k: str(v) for k, v in inspect.get_annotations(fn).items()}
    signature, constexprs, hints = {}, {}, []
    for i, name in enumerate(names):
        value = bound.get(name, inspect.signature(fn).parameters[name].default)
        if "constexpr" in annotations.get(name, "") or value is None:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + TRITON_TYPES[str(value.dtype).replace("torch.", "")]
            if value.data_ptr() % 16 == 0:
                hints.append(i)
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            if value == 1:  # Triton specialises ints equal to 1 into constants
                signature[name], constexprs[name] = "constexpr", 1
            else:
                signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
                if value % 16 == 0:
                    hints.append(i)
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}.{name}: cannot describe a {type(value).__name__} launch argument")
    return {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constexprs": constexprs,
            "hints": hints, "options": options}


@contextlib.contextmanager
def capture_launches():
    """Record every interpreted launch (``_describe`` + ``grid``) in the block; no launch runs. Yields the list
    the launches are appended to."""
    if not runtime.interpreter_enabled():
        raise RuntimeError("capture_launches needs the Triton interpreter (TRITON_INTERPRET=1)")
    from triton.runtime import interpreter as interp  # deferred: the report's modules load without triton

    launches: list[dict] = []
    executor_cls = interp.GridExecutor
    original_call = executor_cls.__call__

    def call(self, *args, **kwargs):
        d = _describe(self.fn, args, kwargs)
        names = list(inspect.signature(self.fn).parameters)
        bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        grid = self.grid(bound) if callable(self.grid) else self.grid
        d["grid"] = [int(g) for g in tuple(grid) + (1,) * (3 - len(grid))]
        launches.append(d)
        return None

    executor_cls.__call__ = call
    try:
        yield launches
    finally:
        executor_cls.__call__ = original_call


def case_launches(case, spec) -> list[dict]:
    """The launches the op makes at the case's full shape on ``spec`` (nothing heavy executes)."""
    import torch  # deferred: the report's modules load without torch (``--help``)

    fn = ops.kernel(case.op)
    args, kwargs = lazy_inputs(case)  # an op without full_inputs is built for real at full size
    if get(case.op).plan:
        kwargs = dict(kwargs, **get(case.op).plan(spec))
    # fresh workspaces read as zeros: no kernel runs, and host code must not see uninitialised memory
    empty, empty_like = torch.empty, torch.empty_like
    torch.empty, torch.empty_like = torch.zeros, torch.zeros_like
    try:
        with capture_launches() as launches:
            fn(*args, **kwargs)
    finally:
        torch.empty, torch.empty_like = empty, empty_like
    return launches


# ------------------------------------------------------------------------------------------------ compile

def _source_digest(module: str) -> str:
    h = hashlib.sha256()
    for path in (ROOT / (module.replace(".", "/") + ".py"), ROOT / "kernels" / "triton" / "common.py",
                 Path(__file__)):
        h.update(path.read_bytes() if path.exists() else module.encode())
    return h.hexdigest()


def config_key(launch: dict, capability: int) -> str:
    import triton  # deferred: the report (and --help) loads without triton

    what = {k: launch[k] for k in ("module", "kernel", "signature", "constexprs", "hints", "options")}
    blob = json.dumps([what, capability, triton.__version__, _source_digest(launch["module"])], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compile_launches(launches: list[dict], capability: int) -> list[dict]:
    """Compile metrics per launch (cached); misses are compiled together in one subprocess."""
    cdir = cache_dir()
    keys = [config_key(launch, capability) for launch in launches]
    todo = {}
    for key, launch in zip(keys, launches):
        if not (cdir / f"{key}.json").exists():
            todo[key] = launch
    failure = None
    if todo:
        cdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.json"
            src.write_text(json.dumps({"capability": capability, "launches": todo}, default=str))
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
            proc = subprocess.run([sys.executable, "-m", "roofline.compile_metrics", "--worker", str(src),
                                   str(cdir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
            failure = f"compile worker exit {proc.returncode}: {proc.stderr[-400:]}" if proc.returncode else None
    out = []
    for key in keys:
        path = cdir / f"{key}.json"
        out.append(json.loads(path.read_text()) if path.exists() else {"error": failure or "not compiled"})
    return out


PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict:
    regs = PTXAS_REGS.findall(log)
    spills = PTXAS_SPILLS.findall(log)
    if not regs:
        raise ValueError(f"ptxas log: no register count in {log[-300:]!r}")
    return {"regs": int(regs[-1]), "spill_stores": int(spills[-1][0]) if spills else 0,
            "spill_loads": int(spills[-1][1]) if spills else 0}


def mma_family(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma.sync"
    return "none"


def _compile_one(launch: dict, capability: int) -> dict:
    """(In the worker, interpreter off.) Compile one launch's configuration and read its metrics."""
    import triton  # deferred: the report (and --help) loads without triton
    from triton import knobs  # deferred: the report (and --help) loads without triton
    from triton.backends.compiler import GPUTarget  # deferred: the report (and --help) loads without triton
    from triton.compiler import ASTSource  # deferred: the report (and --help) loads without triton

    kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    names = list(kernel.arg_names)
    constexprs = {(names.index(k),): v for k, v in launch["constexprs"].items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i in launch["hints"]}
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(fn=kernel, signature=launch["signature"], constexprs=constexprs,
                                            attrs=attrs),
                                  target=GPUTarget("cuda", capability, 32), options=dict(launch["options"]))
    out = parse_ptxas_log(log.getvalue())
    out.update(smem_bytes=int(compiled.metadata.shared), num_warps=int(compiled.metadata.num_warps),
               mma=mma_family(compiled.asm["ptx"]))
    return out


def _worker(src: str, cdir: str) -> None:
    job = json.loads(Path(src).read_text())
    for key, launch in job["launches"].items():
        try:
            result = _compile_one(launch, int(job["capability"]))
        except Exception as exc:  # a kernel that does not compile for this arch is a finding, kept as such
            result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"}
        (Path(cdir) / f"{key}.json").write_text(json.dumps(result))
        print(launch["kernel"], result, flush=True)


# ------------------------------------------------------------------------------------------------ per case

def launch_metrics(launch: dict, compiled: dict, spec) -> dict:
    programs = launch["grid"][0] * launch["grid"][1] * launch["grid"][2]
    config = {k: v for k, v in launch["constexprs"].items() if k.isupper() and isinstance(v, (int, bool))}
    row = {"kernel": launch["kernel"], "config": {**config, **launch["options"]}, "programs": programs}
    if "error" in compiled:
        return row | {"error": compiled["error"]}
    blocks, limit = resident_blocks(spec, compiled["regs"], compiled["smem_bytes"], compiled["num_warps"])
    w, eff = waves(programs, blocks, spec.sms)
    return row | {"regs": compiled["regs"], "spill_bytes": compiled["spill_stores"] + compiled["spill_loads"],
                  "smem_bytes": compiled["smem_bytes"], "num_warps": compiled["num_warps"],
                  "resident_blocks": blocks, "resident_limit": limit, "waves": w, "wave_efficiency": eff,
                  "mma": compiled["mma"]}


def main_launch(launches: list[dict]) -> dict | None:
    """The launch that carries the op's math: among launches using matrix instructions (or all, if none do),
    the one with the most warps in flight (programs x warps)."""
    ok = [m for m in launches if "error" not in m]
    if not ok:
        return launches[0] if launches else None
    pool = [m for m in ok if m["mma"] != "none"] or ok
    return max(pool, key=lambda m: m["programs"] * m["num_warps"])


def case_compile_metrics(case, spec) -> dict:
    """Compile metrics of every launch the op makes for ``case`` at full shape, compiled for ``spec``'s arch."""
    launches = case_launches(case, spec)
    compiled = compile_launches(launches, spec.compute_capability)
    rows = [launch_metrics(launch, c, spec) for launch, c in zip(launches, compiled)]
    return {"arch": f"sm_{spec.compute_capability}", "launches": rows, "main": main_launch(rows)}


def cases_compile_metrics(cases, spec) -> dict[str, dict]:
    """``{case name: case_compile_metrics}``; the cache misses of all cases are compiled in one subprocess."""
    captured = {}
    for case in cases:
        try:
            captured[case.name] = case_launches(case, spec)
        except Exception as exc:  # a launcher that cannot plan this case is a finding: keep going
            captured[case.name] = exc
    flat = [launch for v in captured.values() if isinstance(v, list) for launch in v]
    compiled = iter(compile_launches(flat, spec.compute_capability))
    out = {}
    for name, v in captured.items():
        if isinstance(v, Exception):
            out[name] = {"arch": f"sm_{spec.compute_capability}", "launches": [], "main": None,
                         "error": f"{type(v).__name__}: {str(v)[:300]}"}
            continue
        rows = [launch_metrics(launch, next(compiled), spec) for launch in v]
        out[name] = {"arch": f"sm_{spec.compute_capability}", "launches": rows, "main": main_launch(rows)}
    return out


ROW_COLUMNS = ("regs", "spill_bytes", "smem_bytes", "num_warps", "resident_blocks", "resident_limit", "programs",
               "waves", "wave_efficiency", "mma")


def row_columns(compiled: dict | None) -> dict:
    """The report row's compile columns: the main launch's metrics (``ROW_COLUMNS``, ``main_kernel``), spills
    summed over every launch (``spill_bytes_all``) and the first compile error, if any (``compile_error``)."""
    if not compiled:
        return {}
    main = compiled.get("main") or {}
    out = {k: main.get(k) for k in ROW_COLUMNS}
    out["main_kernel"] = main.get("kernel")
    out["arch"] = compiled.get("arch")
    errors = [m["error"] for m in compiled["launches"] if "error" in m] + ([compiled["error"]]
                                                                           if "error" in compiled else [])
    out["spill_bytes_all"] = None if errors else sum(m["spill_bytes"] for m in compiled["launches"])
    if errors:
        out["compile_error"] = errors[0]
    return out


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3])
