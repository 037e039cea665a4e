"""A merge that is right on its first two calls, then, certain it is being timed, hands back its last
answer without merging."""
from correctness.cheats import _honest

CAUGHT_BY = "fresh values"
_STATE = {"calls": 0, "last": None}


def merge_states(outs, lses, **kwargs):
    _STATE["calls"] += 1
    last = _STATE["last"]
    if _STATE["calls"] > 2 and last is not None and last[0].shape == outs.shape[1:]:
        return last[0].clone(), last[1].clone()
    _STATE["last"] = _honest.merge_states(outs, lses)
    return _STATE["last"][0].clone(), _STATE["last"][1].clone()
