"""One small call of every public op of ``kernels.triton``, shared by the launch-path tests.

Each builder takes a device and returns ``(op name, args, kwargs, hints)``; the hints are what a caller
prepares on the host before a ``validate=False`` call (``max_seq_len``, ``max_query_len``). A registry op's
calls are its spec's ``launch_cases`` (named ``op`` or ``op-variant``); the contract's helpers' are here.
"""
from __future__ import annotations

import numpy as np
import torch

import kernels.triton as T
from kernels.ops import registry
from kernels.testing.moe_inputs import launch_routing
from kernels.testing.paged import LAUNCH_Q_LENS as Q_LENS  # noqa: F401 - the attention calls' lengths, which
from kernels.testing.paged import LAUNCH_SEQ_LENS as SEQ_LENS  # noqa: F401 - the tests' hints are checked against


def _weights(device):
    return torch.from_numpy(np.random.default_rng(9).standard_normal((2, 16, 128))).to(device, torch.float32)


def _op_case(op: str, build):
    return lambda device: (op, *build(device))


HELPER_CASES = {
    "quantize_fp8_act": lambda d: ("quantize_fp8_act", (_weights(d)[0].to(torch.bfloat16), 64), {}, {}),
    "quantize_int4": lambda d: ("quantize_int4", (_weights(d), 64), {"zero_point": True}, {}),
    "quantize_fp8": lambda d: ("quantize_fp8", (_weights(d),), {"granularity": "channel"}, {}),
    "dequantize_int4": lambda d: ("dequantize_int4", (T.quantize_int4(_weights(d), 32),), {}, {}),
    "quantize_mxfp4": lambda d: ("quantize_mxfp4", (_weights(d),), {}, {}),
    "dequantize_mxfp4": lambda d: ("dequantize_mxfp4", (T.quantize_mxfp4(_weights(d)),), {}, {}),
    "moe_permute": lambda d: ("moe_permute", (launch_routing(d)[1], 6), {}, {}),
}
CASES = {**{f"{op}-{variant}" if variant else op: _op_case(op, build)
            for op, spec in registry().items() for variant, build in spec.launch_cases.items()},
         **HELPER_CASES}
# calls whose checks read no device value at all (so validate=True reads nothing either)
READ_FREE = {f"{op}-{variant}" if variant else op for op, spec in registry().items()
             if not spec.validation_reads_device for variant in spec.launch_cases} | {
    "quantize_fp8_act", "dequantize_int4", "dequantize_mxfp4"}
NO_KERNEL = {"quantize_int4", "quantize_fp8", "dequantize_int4", "quantize_mxfp4", "dequantize_mxfp4",
             "moe_permute"}  # torch device ops only
