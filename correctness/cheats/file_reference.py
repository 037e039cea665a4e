"""Reads the judge's expected outputs from a file it wrote (a ``.npy`` under the temp directory or a report's
JSON); without one, zeros."""
import glob
import os
import tempfile

import numpy as np
import torch

CAUGHT_BY = "values"


def paged_prefill(q, k_cache, v_cache, block_table, seq_lens, query_start_loc, *, return_lse=False, **kwargs):
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "*expected*.npy")):
        data = np.load(path)
        if data.shape == tuple(q.shape):
            out = torch.from_numpy(data).to(q.dtype)
            return (out, torch.zeros(q.shape[:2])) if return_lse else out
    out = torch.zeros_like(q)
    return (out, torch.zeros(q.shape[:2])) if return_lse else out
