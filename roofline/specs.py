"""GPU specs for the roofline: DENSE peak FLOP/s per dtype, HBM bandwidth, SM count, L2, shared memory per SM,
and the per-SM limits that decide how many blocks of a compiled kernel are resident (``ARCH_LIMITS``).

Datasheets quote tensor-core peaks "with sparsity" (2:4 structured sparsity, twice the dense rate); every
figure here is the DENSE rate (the sparse figure halved where the datasheet only gives that one), in FLOP/s
(OP/s for int8) at the boost clock. GeForce/Ada figures are the float32-accumulate rates (our kernels
accumulate in float32; the GeForce fp16-accumulate rate is twice that). A dtype the GPU's tensor cores do not
support (fp8 before Ada/Hopper) is absent; ``GpuSpec.peak`` then falls back to the rate the kernel really
gets there (fp8 operands widened to fp16).

Add a GPU with a JSON or TOML file (``load_spec_file``, or ``SERVEKERNELS_GPU_SPECS=path``): one table per GPU
with the fields of ``GpuSpec``, e.g.::

    [[gpu]]
    slug = "my-gpu"
    name = "NVIDIA Something"
    match = ["Something"]
    hbm_bytes_per_s = 2.0e12
    sms = 100
    l2_bytes = 50331648
    smem_per_sm_bytes = 233472
    peak_flops = { fp32 = 6.0e13, tf32 = 4.0e14, bf16 = 8.0e14, fp16 = 8.0e14, fp8 = 1.6e15, int8 = 1.6e15 }
    source = "vendor datasheet, 2025"
    compute_capability = 90   # optional; the per-SM limits below default to ARCH_LIMITS[compute_capability]

Per-SM limits (``compute_capability`` 90 = sm_90 H100/H200, 80 = sm_80 A100, 89 = sm_89 L4/RTX 4090, 86 = sm_86
A10), from the CUDA C++ Programming Guide, "Technical Specifications per Compute Capability" (registers per SM,
registers per thread, resident threads / warps / blocks per SM, shared memory per SM and per block) and the
Hopper, Ampere and Ada tuning guides (shared memory: 228 KB/SM and 227 KB/block on sm_90, 164/163 KB on sm_80,
100/99 KB on sm_86 and sm_89; 1 KB of each block's shared memory is reserved by the system on sm_80 and later;
registers are allocated per warp in units of 256).
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field

from kernels import runtime  # its functions are looked up at each call (tests patch them)

DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
# where a GPU lacks a tensor-core dtype, the kernel runs at the rate of the next one it widens to
_FALLBACK = {"fp8": "fp16", "int8": "fp16", "tf32": "fp32", "bf16": "fp16", "fp16": "fp32"}
# names the rest of the suite uses for dtypes -> the spec's keys
DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "tf32": "tf32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "float8_e4m3fn": "fp8", "float8": "fp8", "fp8_e4m3": "fp8", "int8": "int8",
}
SPEC_FILE_ENV = "SERVEKERNELS_GPU_SPECS"
DEFAULT_SLUG = "h100-sxm"

T = 1e12
MiB = 1024 * 1024
KiB = 1024

# compute capability -> per-SM limits (sources in the module docstring)
ARCH_LIMITS = {
    90: dict(regs_per_sm=65536, max_regs_per_thread=255, max_threads_per_sm=2048, max_warps_per_sm=64,
             max_blocks_per_sm=32, smem_per_block_bytes=227 * KiB),
    80: dict(regs_per_sm=65536, max_regs_per_thread=255, max_threads_per_sm=2048, max_warps_per_sm=64,
             max_blocks_per_sm=32, smem_per_block_bytes=163 * KiB),
    89: dict(regs_per_sm=65536, max_regs_per_thread=255, max_threads_per_sm=1536, max_warps_per_sm=48,
             max_blocks_per_sm=24, smem_per_block_bytes=99 * KiB),
    86: dict(regs_per_sm=65536, max_regs_per_thread=255, max_threads_per_sm=1536, max_warps_per_sm=48,
             max_blocks_per_sm=16, smem_per_block_bytes=99 * KiB),
}
RESERVED_SMEM_PER_BLOCK = 1 * KiB  # sm_80 and later
REG_ALLOC_UNIT = 256  # registers are allocated per warp in multiples of this
LIMIT_FIELDS = tuple(ARCH_LIMITS[90])


@dataclass(frozen=True)
class GpuSpec:
    slug: str
    name: str
    hbm_bytes_per_s: float
    sms: int
    l2_bytes: int
    smem_per_sm_bytes: int
    peak_flops: dict  # dtype key (DTYPES) -> dense FLOP/s
    source: str
    match: tuple = field(default=())  # substrings of torch.cuda.get_device_name() that identify it
    compute_capability: int = 90  # 90 = sm_90; the target the compile metrics compile for
    # per-SM limits; None = ARCH_LIMITS[compute_capability]
    regs_per_sm: int | None = None
    max_regs_per_thread: int | None = None
    max_threads_per_sm: int | None = None
    max_warps_per_sm: int | None = None
    max_blocks_per_sm: int | None = None
    smem_per_block_bytes: int | None = None

    def __post_init__(self):
        defaults = ARCH_LIMITS.get(int(self.compute_capability))
        for name in LIMIT_FIELDS:
            if getattr(self, name) is None:
                if defaults is None:
                    raise ValueError(f"{self.slug}.{name}: compute capability {self.compute_capability} has no "
                                     f"built-in limits ({sorted(ARCH_LIMITS)}); give {name}")
                object.__setattr__(self, name, defaults[name])
            if not getattr(self, name) > 0:
                raise ValueError(f"{self.slug}.{name}: must be positive, got {getattr(self, name)!r}")
        for name in ("hbm_bytes_per_s", "sms", "l2_bytes", "smem_per_sm_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{self.slug}.{name}: must be positive, got {getattr(self, name)!r}")
        unknown = set(self.peak_flops) - set(DTYPES)
        if unknown:
            raise ValueError(f"{self.slug}.peak_flops: unknown dtype(s) {sorted(unknown)}; known: {DTYPES}")
        if "fp32" not in self.peak_flops:
            raise ValueError(f"{self.slug}.peak_flops: needs at least 'fp32'")
        if any(not v > 0 for v in self.peak_flops.values()):
            raise ValueError(f"{self.slug}.peak_flops: every peak must be positive")

    def peak(self, dtype: str) -> float:
        """Dense FLOP/s for a compute dtype ('bfloat16', 'bf16', 'float8_e4m3fn', ...), with fallback."""
        key = DTYPE_ALIASES.get(str(dtype).replace("torch.", ""), str(dtype))
        if key not in DTYPES:
            raise ValueError(f"dtype: unknown compute dtype {dtype!r}; known: {DTYPES}")
        while key not in self.peak_flops:
            key = _FALLBACK[key]
        return float(self.peak_flops[key])

    def ridge_point(self, dtype: str) -> float:
        """FLOPs per byte where a kernel turns from memory- to compute-bound."""
        return self.peak(dtype) / self.hbm_bytes_per_s

    def to_json(self) -> dict:
        d = asdict(self)
        d["match"] = list(self.match)
        return d


_BUILTIN = [
    GpuSpec(
        slug="h100-sxm", name="NVIDIA H100 SXM5 80GB", match=("H100 80GB HBM3", "H100 SXM", "H100-SXM"),
        hbm_bytes_per_s=3.35e12, sms=132, l2_bytes=50 * MiB, smem_per_sm_bytes=228 * KiB,
        peak_flops={"fp32": 67 * T, "tf32": 494.7 * T, "fp16": 989.4 * T, "bf16": 989.4 * T,
                    "fp8": 1978.9 * T, "int8": 1978.9 * T},
        compute_capability=90,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM column; tensor figures quoted with sparsity, halved) "
               "and NVIDIA H100 (Hopper) architecture whitepaper table 3 (132 SMs, 50 MB L2, 228 KB smem/SM)"),
    GpuSpec(
        slug="h100-pcie", name="NVIDIA H100 PCIe 80GB", match=("H100 PCIe",),
        hbm_bytes_per_s=2.0e12, sms=114, l2_bytes=50 * MiB, smem_per_sm_bytes=228 * KiB,
        peak_flops={"fp32": 51 * T, "tf32": 378 * T, "fp16": 756 * T, "bf16": 756 * T,
                    "fp8": 1513 * T, "int8": 1513 * T},
        compute_capability=90,
        source="NVIDIA H100 Tensor Core GPU datasheet (PCIe column, sparse figures halved); Hopper whitepaper "
               "table 3 (114 SMs)"),
    GpuSpec(
        slug="h200", name="NVIDIA H200 SXM 141GB", match=("H200",),
        hbm_bytes_per_s=4.8e12, sms=132, l2_bytes=60 * MiB, smem_per_sm_bytes=228 * KiB,
        peak_flops={"fp32": 67 * T, "tf32": 494.7 * T, "fp16": 989.4 * T, "bf16": 989.4 * T,
                    "fp8": 1978.9 * T, "int8": 1978.9 * T},
        compute_capability=90,
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM column, 4.8 TB/s HBM3e; sparse figures halved); same "
               "GH100 die as H100 SXM; L2 60 MiB as torch.cuda.get_device_properties().L2_cache_size reports on "
               "an H200 (the datasheet states none; the H100's 50 MiB does not carry over)"),
    GpuSpec(
        slug="a100-80gb", name="NVIDIA A100 SXM4 80GB", match=("A100-SXM4-80GB", "A100 80GB", "A100-80GB"),
        hbm_bytes_per_s=2.039e12, sms=108, l2_bytes=40 * MiB, smem_per_sm_bytes=164 * KiB,
        peak_flops={"fp32": 19.5 * T, "tf32": 156 * T, "fp16": 312 * T, "bf16": 312 * T, "int8": 624 * T},
        compute_capability=80,
        source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM column, dense figures; 2,039 GB/s); Ampere GA100 "
               "whitepaper (108 SMs, 40 MB L2, 164 KB smem/SM); no fp8 tensor cores"),
    GpuSpec(
        slug="l4", name="NVIDIA L4", match=("L4",),
        hbm_bytes_per_s=300e9, sms=58, l2_bytes=48 * MiB, smem_per_sm_bytes=100 * KiB,
        peak_flops={"fp32": 30.3 * T, "tf32": 60 * T, "fp16": 121 * T, "bf16": 121 * T,
                    "fp8": 242.5 * T, "int8": 242.5 * T},
        compute_capability=89,
        source="NVIDIA L4 Tensor Core GPU datasheet (tensor figures quoted with sparsity, halved; 300 GB/s "
               "GDDR6); Ada Lovelace whitepaper (AD104: 58 SMs enabled, 48 MB L2, 100 KB smem/SM)"),
    GpuSpec(
        slug="a10", name="NVIDIA A10", match=("A10",),
        hbm_bytes_per_s=600e9, sms=72, l2_bytes=6 * MiB, smem_per_sm_bytes=100 * KiB,
        peak_flops={"fp32": 31.2 * T, "tf32": 62.5 * T, "fp16": 125 * T, "bf16": 125 * T, "int8": 250 * T},
        compute_capability=86,
        source="NVIDIA A10 Tensor Core GPU datasheet (sparse figures halved; 600 GB/s GDDR6); Ampere GA102 "
               "whitepaper (72 SMs, 6 MB L2, 100 KB smem/SM); no fp8 tensor cores"),
    GpuSpec(
        slug="rtx-4090", name="NVIDIA GeForce RTX 4090", match=("RTX 4090",),
        hbm_bytes_per_s=1008e9, sms=128, l2_bytes=72 * MiB, smem_per_sm_bytes=100 * KiB,
        peak_flops={"fp32": 82.6 * T, "tf32": 82.6 * T, "fp16": 165.2 * T, "bf16": 165.2 * T,
                    "fp8": 330.3 * T, "int8": 660.6 * T},
        compute_capability=89,
        source="NVIDIA Ada Lovelace GPU architecture whitepaper, appendix table (RTX 4090: 128 SMs, 72 MB L2, "
               "1008 GB/s GDDR6X; tensor rates with FP32 accumulate, dense column)"),
]


def _number(d: dict, key: str, origin: str, kind=float):
    """``d[key]`` as a positive ``kind``; a wrong value names the file, the GPU and the field."""
    value = d[key]
    try:
        if isinstance(value, bool) or kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{origin}: GPU spec {d.get('slug', '?')!r}: {key} must be {what}, got {value!r}") from None
    return number


def _from_mapping(d, origin: str) -> GpuSpec:
    if not isinstance(d, dict):
        raise ValueError(f"{origin}: each GPU spec must be a table of fields (see roofline/specs.py), got {d!r}")
    required = ("slug", "name", "hbm_bytes_per_s", "sms", "l2_bytes", "smem_per_sm_bytes", "peak_flops")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{origin}: GPU spec {d.get('slug', '?')!r} is missing {missing}")
    unknown = set(d) - set(required) - {"source", "match", "compute_capability", *LIMIT_FIELDS}
    if unknown:
        raise ValueError(f"{origin}: GPU spec {d['slug']!r} has unknown field(s) {sorted(unknown)}")
    peaks = d["peak_flops"]
    if not isinstance(peaks, dict):
        raise ValueError(f"{origin}: GPU spec {d['slug']!r}: peak_flops must be a table of dtype = FLOP/s, "
                         f"got {peaks!r}")
    match = d.get("match", ())
    if isinstance(match, str) or not all(isinstance(m, str) for m in match):
        raise ValueError(f"{origin}: GPU spec {d['slug']!r}: match must be a list of strings, got {match!r}")
    try:
        return GpuSpec(slug=str(d["slug"]), name=str(d["name"]),
                       hbm_bytes_per_s=_number(d, "hbm_bytes_per_s", origin),
                       sms=_number(d, "sms", origin, int), l2_bytes=_number(d, "l2_bytes", origin, int),
                       smem_per_sm_bytes=_number(d, "smem_per_sm_bytes", origin, int),
                       peak_flops={str(k): _number(peaks, k, origin) for k in peaks},
                       source=str(d.get("source", f"user file {origin}")), match=tuple(match),
                       compute_capability=_number(d, "compute_capability", origin, int)
                       if "compute_capability" in d else 90,
                       **{k: _number(d, k, origin, int) for k in LIMIT_FIELDS if d.get(k) is not None})
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(origin) else f"{origin}: {msg}") from None


def load_spec_file(path) -> list[GpuSpec]:
    """GPU specs from a JSON (a list, or ``{"gpu": [...]}``) or TOML (``[[gpu]]`` tables) file. Any mistake in
    it (unreadable, not JSON/TOML, a missing or wrong field) is a ``ValueError`` naming the file and the field."""
    path = os.fspath(path)
    try:
        if path.endswith(".toml"):

            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path) as f:
                data = json.load(f)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the GPU spec file ({exc.strerror or exc})") from None
    except ValueError as exc:  # json.JSONDecodeError, tomllib.TOMLDecodeError, a non-UTF-8 file
        kind = "TOML" if path.endswith(".toml") else "JSON (name a TOML file *.toml)"
        raise ValueError(f"{path}: not valid {kind}: {exc}") from None
    entries = data.get("gpu", []) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a list of GPU specs (JSON list or [[gpu]] TOML tables)")
    return [_from_mapping(e, path) for e in entries]


def check_spec_files(extra_file=None) -> None:
    """Load ``$SERVEKERNELS_GPU_SPECS`` and ``extra_file`` once, so a mistake in either is reported before any
    work, as a ``ValueError`` that starts with where the file came from."""
    for origin, path in ((f"${SPEC_FILE_ENV}", os.environ.get(SPEC_FILE_ENV)), ("--gpu-spec-file", extra_file)):
        if not path:
            continue
        if not os.path.isfile(path):
            raise ValueError(f"{origin}: no file {path!r}")
        try:
            load_spec_file(path)
        except ValueError as exc:
            raise ValueError(f"{origin}: {exc}") from None


def all_specs(extra_file=None) -> dict[str, GpuSpec]:
    """Built-in specs, then ``$SERVEKERNELS_GPU_SPECS``, then ``extra_file`` (a later slug replaces an earlier)."""
    specs = {s.slug: s for s in _BUILTIN}
    for path in (os.environ.get(SPEC_FILE_ENV), extra_file):
        if path:
            specs.update({s.slug: s for s in load_spec_file(path)})
    return specs


def get_spec(slug: str = DEFAULT_SLUG, extra_file=None) -> GpuSpec:
    specs = all_specs(extra_file)
    if slug not in specs:
        raise ValueError(f"gpu: unknown GPU {slug!r}; known: {', '.join(sorted(specs))} "
                         f"(add one with a spec file, see roofline/specs.py)")
    return specs[slug]


def match_name(device_name: str, extra_file=None) -> GpuSpec | None:
    """The spec whose ``match`` strings best fit a CUDA device name (the longest matching string wins)."""
    best, best_len = None, 0
    for spec in all_specs(extra_file).values():
        for pat in spec.match:
            if _word_in(pat.lower(), device_name.lower()) and len(pat) > best_len:
                best, best_len = spec, len(pat)
    return best


def _word_in(pat: str, name: str) -> bool:
    """``pat`` occurs in ``name`` not followed by an alphanumeric ("A10" must not match "A100")."""
    start = name.find(pat)
    while start >= 0:
        end = start + len(pat)
        before_ok = start == 0 or not name[start - 1].isalnum()
        if before_ok and (end == len(name) or not name[end].isalnum()):
            return True
        start = name.find(pat, start + 1)
    return False


def detect_spec(extra_file=None) -> GpuSpec | None:
    """The spec of CUDA device 0, or None without a GPU (or for a GPU this table does not know)."""
    if runtime.interpreter_enabled() or not runtime.cuda_available():
        return None
    import torch  # deferred: the report (and --help) loads without torch

    return match_name(torch.cuda.get_device_name(0), extra_file)
