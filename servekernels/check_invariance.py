"""``servekernels check --invariance``: which batch-invariance properties hold for an implementation.

``--impl NAME`` (repeatable; default ``servekernels``): any provider ``kernels.impls.load`` resolves
(``servekernels``, ``reference``, ``torch``, ``vllm``: vLLM's kernels have no ``batch_invariant`` keyword, so
only the default mode means anything for them; an entry point; a dotted import path ``pkg.module[:attr]``).
Prints one row per property and mode; exits 1 when a property fails for ``servekernels`` in a mode where the
kernels promise it (``Property.promised``); other implementations are reported, not judged.
``--needle N`` also runs the engine needle test among N other requests, in both modes.
"""
from __future__ import annotations

import time

from kernels.impls import load
from kernels.runtime import machine_label


def resolve(name: str):
    """The implementation's functions under the contract's names (``kernels.impls``)."""
    return load(name).namespace()


def run(args) -> int:
    from kernels.testing import invariance as I  # deferred: it imports torch; `check --help` must not

    impls = args.impl or ["servekernels"]
    print(f"servekernels check --invariance on {machine_label()} (bitwise comparisons; kernels run under the "
          "interpreter where there is no GPU)")
    header = f"{'impl':<13} {'property':<44} {'mode':<10} {'promised':<8} {'s':>5}  verdict"
    print(header)
    print("-" * len(header))
    failures = 0
    for name in impls:
        try:
            impl = resolve(name)
        except Exception as exc:  # noqa: BLE001 - a provider that cannot load is reported, not a pass
            print(f"{name:<13} (not available: {type(exc).__name__}: {exc})")
            failures += name == "servekernels"
            continue
        for prop in [p for p in I.PROPERTIES if not args.select or any(s in p.name for s in args.select)]:
            for mode in prop.modes:
                t0 = time.perf_counter()
                try:
                    v = prop.run(impl, mode)
                    label = v.label
                except I.Vacuous as exc:
                    v, label = None, f"VACUOUS: {exc}"
                promised = mode in prop.promised
                bad = promised and name == "servekernels" and (v is None or v.holds is not True)
                failures += bad
                print(f"{name:<13} {prop.name:<44} {mode:<10} {'yes' if promised else '-':<8} "
                      f"{time.perf_counter() - t0:>5.1f}  {label}{'  FAIL' if bad else ''}", flush=True)
    if args.needle:
        failures += _needle(args.needle)
    print(f"{failures} promised properties failed" if failures else "every promised property holds")
    return 1 if failures else 0


def _needle(n: int) -> int:
    from engine.needle import needle_run, same_bits  # deferred: the engine imports torch; `check --help` must not

    bad = 0
    for inv in (True, False):
        t0 = time.perf_counter()
        alone, crowd = needle_run(0, batch_invariant=inv), needle_run(n, batch_invariant=inv, seed=n)
        same = same_bits(alone, crowd)
        diff = float(abs(alone.logprobs.astype(float) - crowd.logprobs.astype(float)).max()) \
            if len(alone.logprobs) == len(crowd.logprobs) else float("nan")
        print(f"{'engine':<13} {'needle among ' + str(n) + ' requests':<44} {'invariant' if inv else 'default':<10} "
              f"{'yes' if inv else '-':<8} {time.perf_counter() - t0:>5.1f}  "
              f"{'holds' if same else f'differs (tokens equal: {alone.tokens == crowd.tokens}, max logprob diff {diff:.2e})'}"
              f"  [preemptions {crowd.num_preemptions}, prefix-hit tokens {crowd.prefix_hit_tokens}, chunked steps "
              f"{crowd.chunked_steps}, mixed steps {crowd.mixed_steps}]", flush=True)
        bad += inv and not same
    return bad
