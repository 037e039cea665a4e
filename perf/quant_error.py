"""Quantization error of the reference int4 and fp8 schemes on Gaussian weights (no kernel involved).

    python -m perf.quant_error [--experts 4 --n 512 --k 1024 --seed 0]

For each scheme: the relative RMS error ||w - dq(q(w))|| / ||w||, the worst element error relative to the
largest |w| of the tensor, and (int4) the worst element error in units of its group's scale (at most 0.5 for
round-to-nearest inside the range).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from kernels import reference as R
from kernels.reference._arrays import f64


def measure(experts=4, n=512, k=1024, seed=0) -> list[dict]:
    w = torch.from_numpy(np.random.default_rng(seed).standard_normal((experts, n, k))).float()
    w64 = f64(w)
    rows = []

    def row(scheme, dq, extra=None):
        err = np.abs(f64(dq) - w64)
        r = {"scheme": scheme, "rel_rms": float(np.sqrt((err ** 2).sum() / (w64 ** 2).sum())),
             "max_err_over_max_w": float(err.max() / np.abs(w64).max())}
        r.update(extra or {})
        rows.append(r)

    for zp in (False, True):
        for g in (32, 64, 128):
            q = R.quantize_int4(w, group_size=g, zero_point=zp)
            dq = f64(R.dequantize_int4(q))
            scale = np.repeat(f64(q.scales), g, axis=-1)
            row(f"int4 {'zero-point' if zp else 'symmetric'} g{g}", dq,
                {"max_err_in_scales": float((np.abs(dq - w64) / scale).max())})
    for gran in ("tensor", "channel", "block"):
        q = R.quantize_fp8(w, granularity=gran)
        row(f"fp8 e4m3 {gran}" + (" 128x128" if gran == "block" else ""), R.dequantize_fp8(q))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"Gaussian weights [{a.experts}, {a.n}, {a.k}], seed {a.seed} (float64 reference quantizers, CPU)")
    print("| scheme | relative RMS error | max error / max abs w | max error / group scale |")
    print("| --- | ---: | ---: | ---: |")
    for r in measure(a.experts, a.n, a.k, a.seed):
        s = r.get("max_err_in_scales")
        print(f"| {r['scheme']} | {r['rel_rms']:.4f} | {r['max_err_over_max_w']:.4f} | {'' if s is None else f'{s:.3f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
