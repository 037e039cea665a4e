"""``servekernels trace coverage``: which published FlashInfer-Trace definition families this suite judges.

The published list is pinned in ``published.txt`` (its header names the sources and commits): the definition
names flashinfer-bench publishes and the trace templates FlashInfer ships. A flashinfer-bench name's family is
the name without its constant parts (``gqa_paged_decode_h32_kv8_d128_ps1`` -> ``gqa_paged_decode``); a
template is its ``name_prefix``. A family counts as judged when an adapter of ``families`` declares it
(``Family.published``) and the registry has the adapter's op; the percentage is over the families (and, for
flashinfer-bench, also over the names).
"""
from __future__ import annotations

import re
from pathlib import Path

PUBLISHED = Path(__file__).with_name("published.txt")
_CONST = re.compile(r"^(h|kv|d|ps|n|k|v|e|i|topk|ng|kg|ckv|kpe|qk|vo|rd|qo|hidden|m)\d+$")

def family_of(name: str) -> str:
    return "_".join(t for t in name.split("_") if not _CONST.match(t))


def published() -> dict:
    """``{"fib": [names], "fi": [(module, prefix)]}`` from the pinned list."""
    out = {"fib": [], "fi": []}
    for line in PUBLISHED.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, _, rest = line.partition(" ")
        out[kind].append(rest.strip() if kind == "fib" else tuple(rest.split(" ", 1)))
    return out


def coverage() -> dict:
    from servekernels.trace.families import judged_families  # deferred: coverage's list reads without torch

    pub = published()
    judged = judged_families()
    fib_families = sorted({family_of(n) for n in pub["fib"]})
    fib_names_judged = [n for n in pub["fib"] if family_of(n) in judged]
    fi_prefixes = sorted({p for _, p in pub["fi"]})
    return {
        "fib_families": fib_families,
        "fib_judged": [f for f in fib_families if f in judged],
        "fib_names": len(pub["fib"]),
        "fib_names_judged": len(fib_names_judged),
        "fi_templates": fi_prefixes,
        "fi_judged": [p for p in fi_prefixes if p in judged],
        "judged_ops": judged,
    }


def report(log=print) -> dict:
    c = coverage()

    def pct(a, b):
        return 100.0 * a / b if b else 0.0

    log(f"flashinfer-bench: {len(c['fib_judged'])}/{len(c['fib_families'])} definition families judged "
        f"({pct(len(c['fib_judged']), len(c['fib_families'])):.1f}%), {c['fib_names_judged']}/{c['fib_names']} "
        f"published definitions ({pct(c['fib_names_judged'], c['fib_names']):.1f}%)")
    log(f"FlashInfer trace templates: {len(c['fi_judged'])}/{len(c['fi_templates'])} judged "
        f"({pct(len(c['fi_judged']), len(c['fi_templates'])):.1f}%)")
    for f in c["fib_families"]:
        log(f"  {'judged ' if f in c['fib_judged'] else 'missing'}  {f}"
            + (f"  -> {c['judged_ops'][f]}" if f in c["judged_ops"] else ""))
    log(f"  (templates judged: {', '.join(c['fi_judged']) or 'none'}; the list and its sources: {PUBLISHED.name})")
    return c
