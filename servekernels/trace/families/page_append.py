"""FlashInfer's ``append_paged_kv_cache`` template: covered, not judged (it would map to ``write_kv``).

The call appends ``append_key``/``append_value`` rows into a paged cache at ``(batch_indices, positions)``
through the CSR page list, which is ``write_kv`` with ``slot = kv_indices[kv_indptr[b] + pos // page_size] *
page_size + pos % page_size``. But the template declares the cache, FlashInfer's ``(k_cache, v_cache)`` tuple, as
one 4-D tensor input and in-place output named ``paged_kv_cache``: its fi_trace dump records dtype "unknown" and
no page size (``append_paged_kv_cache_kv{KV}_d{D}``), and a workload cannot carry two caches in one tensor of that
shape. ``why_not`` says so instead of guessing a layout; its init also needs ``flashinfer.get_batch_indices_positions``
(outside the trace-only install), so no template comparison runs either.
"""
from __future__ import annotations

import re

from servekernels.trace.families._base import Family

_APPEND = re.compile(r"^append_paged_kv_cache(_[a-z0-9_]+)?$")


class AppendPagedKvCache(Family):
    """FlashInfer's ``append_paged_kv_cache``: covered, not judged (why: the module docstring)."""

    name = "append_paged_kv_cache"
    op = "write_kv"
    published = ()  # not judged

    def covers(self, definition):
        return bool(_APPEND.match(definition.name))

    def why_not(self, definition):
        return ("append_paged_kv_cache's paged_kv_cache is FlashInfer's (k_cache, v_cache) tuple declared as one 4-D "
                "tensor (a dump records its dtype as unknown): a workload cannot carry both caches, so no write_kv "
                "call can be built from it")

    def _plain(self, inputs):
        return False

    def definition_for(self, spec, case, inputs, expected):
        return None
