"""Where a counted launch's bytes go: per launch (for the timing model) and per kernel argument (the report's
"where the bytes go"), each store credited to the argument it writes."""
from __future__ import annotations


def by_launch(counter) -> list:
    """[[kernel, bytes], ...] per launch, in launch order (the timing model's per-launch shares)."""
    return [[launch.kernel, launch.load_bytes + launch.store_bytes + 2 * launch.atomic_bytes]
            for launch in counter.launches]


def _short(kernel: str) -> str:
    name = kernel.strip("_")
    return name[:-len("_kernel")] if name.endswith("_kernel") else name


def by_argument(counter) -> dict[str, int]:
    """Bytes per kernel argument over all launches (loads + stores + atomics both ways). An argument name that
    two kernels of the op share (decode's ``out_ptr`` holds the split partials, the merge kernel's the final
    output) is qualified by its kernel (``paged_decode.out_ptr``, ``merge.out_ptr``) instead of being summed."""
    per: dict[tuple[str, str], int] = {}
    for launch in counter.launches:
        for d in (launch.loads, launch.stores, launch.atomics, launch.atomics):
            for arg, v in d.items():
                per[(launch.kernel, arg)] = per.get((launch.kernel, arg), 0) + int(round(v))
    kernels_of: dict[str, set] = {}
    for kernel, arg in per:
        kernels_of.setdefault(arg, set()).add(kernel)
    out: dict[str, int] = {}
    for (kernel, arg), v in per.items():
        key = arg if len(kernels_of[arg]) == 1 else f"{_short(kernel)}.{arg}"
        out[key] = out.get(key, 0) + v
    return out
