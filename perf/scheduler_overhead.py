"""Scheduler + block-manager time per engine step, CPU only: no model, a stub runner that returns a token.

Two scenarios (each step = ``Scheduler.schedule()``, the stub's tokens, ``Scheduler.update_from_output()``;
block allocation, prefix-cache lookups, hashing of newly full blocks and frees all happen inside them):

- ``decode_256``: 256 running requests, every step one decode token each (steady state, after admission).
- ``burst_64``: 64 requests with 512-token prompts (a 256-token shared system prompt, so half of each prompt is
  a prefix-cache hit after the first) arrive at once while 192 requests decode; timed over the steps until
  every arrival has its first token.

``measure()`` returns the numbers (milliseconds per step; the perf suite wraps it); ``python -m
perf.scheduler_overhead`` prints them. Target: under 1 ms per step.
"""
from __future__ import annotations

import argparse
import statistics
import time

from engine.block_pool import hash_block_tokens
from engine.config import EngineConfig
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


def _stub_step(sched: Scheduler) -> tuple[int, int]:
    """One schedule -> stub forward -> update round; returns (nanoseconds, scheduled tokens)."""
    t0 = time.perf_counter_ns()
    out = sched.schedule()
    sampled = {r.request_id: (r.num_tokens * 31 + 7) % 256 for r in sched.sampling_requests(out)}
    sched.update_from_output(out, sampled)
    return time.perf_counter_ns() - t0, out.num_scheduled_tokens


def _request(i: int, prompt: list[int], cfg: EngineConfig, max_tokens: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    hasher = hash_block_tokens if cfg.enable_prefix_caching else None
    return Request(f"r{i}", prompt, params, eos_token_id=256, block_size=cfg.block_size, block_hasher=hasher,
                   arrival_index=i)


def _config(prefix_caching: bool) -> EngineConfig:
    return EngineConfig(block_size=16, num_blocks=16384, max_num_seqs=256, max_num_batched_tokens=8192,
                        enable_prefix_caching=prefix_caching, max_model_len=4096)


def decode_256(steps: int = 200, prefix_caching: bool = True) -> list[float]:
    """Milliseconds per step of 256 running decodes (one token each per step)."""
    cfg = _config(prefix_caching)
    sched = Scheduler(cfg)
    for i in range(256):
        sched.add_request(_request(i, [(i * 7 + j) % 256 for j in range(32)], cfg, max_tokens=steps + 10))
    _stub_step(sched)  # admits all 256 (8192 prompt tokens, one step)
    assert len(sched.running) == 256, len(sched.running)
    times = []
    for _ in range(steps):
        ns, tokens = _stub_step(sched)
        assert tokens == 256
        times.append(ns / 1e6)
    return times


def burst_64(prefix_caching: bool = True) -> list[float]:
    """Milliseconds per step while a burst of 64 long-prompt arrivals is admitted among 192 decodes."""
    cfg = _config(prefix_caching)
    sched = Scheduler(cfg)
    for i in range(192):
        sched.add_request(_request(i, [(i * 7 + j) % 256 for j in range(32)], cfg, max_tokens=1000))
    _stub_step(sched)
    for _ in range(3):
        _stub_step(sched)
    system = [(5 * j + 3) % 256 for j in range(256)]
    burst = [_request(1000 + i, system + [(i * 13 + j) % 256 for j in range(256)], cfg, max_tokens=1000)
             for i in range(64)]
    for r in burst:
        sched.add_request(r)
    times = []
    while any(r.num_output_tokens == 0 for r in burst):
        ns, _ = _stub_step(sched)
        times.append(ns / 1e6)
    return times


def measure(repeats: int = 3) -> dict[str, float]:
    """Milliseconds per step for both scenarios, prefix caching on and off (the best of ``repeats`` runs)."""
    res = {}
    for caching, tag in ((True, ""), (False, "_nocache")):
        dec = min((decode_256(prefix_caching=caching) for _ in range(repeats)), key=statistics.median)
        bur = min((burst_64(prefix_caching=caching) for _ in range(repeats)), key=statistics.median)
        res.update({f"decode_256{tag}_median_ms": statistics.median(dec), f"decode_256{tag}_p90_ms": _p90(dec),
                    f"burst_64{tag}_median_ms": statistics.median(bur), f"burst_64{tag}_max_ms": max(bur),
                    f"burst_64{tag}_steps": float(len(bur))})
    return res


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    res = measure(args.repeats)
    print("scheduler + block manager per step (CPU, stub runner, no model)")
    for k, v in res.items():
        print(f"  {k:30s} {v:8.3f}")
    ok = all(v < 1.0 for k, v in res.items() if k.endswith("median_ms"))
    print("target < 1 ms per step:", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
