"""An MXFP4 dequantization that reads the scales in tiles of 4 blocks (128 k) without masking the last tile: past
each row's ``K // 32`` scales it reads whatever follows in storage (triton#10772, vllm#47323). The codes and the
activations past K are zero, so on a padded scale layout whose padding is 255 (the E8M0 NaN) every output is
0 * NaN = NaN; on memory that holds finite bytes there it would pass. Must fail ``check``."""
import torch

from kernels import torch_eager as _E
from kernels.reference.quant import E2M1_VALUES

SERVEKERNELS_TRITON = False
TILE_BLOCKS = 4


def _dequantize_tiled(weight) -> torch.Tensor:
    """float32 ``[E, N, K_pad]`` with ``K_pad`` K rounded up to whole 128-wide tiles: codes past K are 0, their
    scales read from storage past each row's end (the bug)."""
    e, n, k = weight.shape
    blocks = -(-(k // 32) // TILE_BLOCKS) * TILE_BLOCKS
    q = weight.data
    codes = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(e, n, k).long()
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    values = torch.zeros((e, n, blocks * 32))
    values[..., :k] = torch.where(codes >= 8, -table[codes & 7], table[codes & 7])
    s = weight.scales
    wide = torch.as_strided(s, (e, n, blocks), s.stride(), s.storage_offset())  # the bug: no mask past K // 32
    scale = torch.where(wide == 255, float("nan"), torch.exp2(wide.float() - 127))
    return values * scale.repeat_interleave(32, dim=-1)


def grouped_gemm_mxfp4(a, weight, group_offsets, *, bias=None, out_dtype=None, batch_invariant=False):
    w = _dequantize_tiled(weight)
    a_pad = torch.zeros((a.shape[0], w.shape[-1]), dtype=torch.float32)
    a_pad[:, : a.shape[1]] = a.float()
    offs = group_offsets.tolist()
    y = torch.zeros((a.shape[0], w.shape[1]))
    for i in range(len(offs) - 1):
        if offs[i + 1] > offs[i]:
            y[offs[i]:offs[i + 1]] = a_pad[offs[i]:offs[i + 1]] @ w[i].T
            if bias is not None:
                y[offs[i]:offs[i + 1]] += bias[i]
    return y.to(out_dtype or a.dtype)
