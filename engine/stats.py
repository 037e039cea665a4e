"""What the engine reports: per-step stats, per-request latency (in steps and seconds), a summary.

The NVTX ranges (``kernels.nvtx.nvtx_range(name, "engine")``) are entered by ``LLMEngine.step``: "step",
and inside it "schedule", "prepare", "forward" (with "attention" and "moe" per layer inside), "sample",
"update". Under ``kernels.nvtx.record_trace()`` the same ranges become a Chrome trace.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(slots=True)
class StepStats:
    step: int
    num_running: int  # after scheduling
    num_waiting: int
    num_scheduled_reqs: int
    num_scheduled_tokens: int
    num_decode_reqs: int  # requests computing exactly one token that was sampled in an earlier step
    num_preempted: int
    num_prefix_hit_tokens: int
    kv_usage: float  # fraction of usable blocks held by requests, after the step
    num_finished: int
    seconds: float


@dataclass(slots=True)
class RequestTimes:
    arrival_step: int  # steps completed before the request arrived
    arrival_s: float
    token_steps: list[int] = field(default_factory=list)
    token_s: list[float] = field(default_factory=list)

    @property
    def ttft_steps(self) -> int | None:
        return self.token_steps[0] - self.arrival_step if self.token_steps else None

    @property
    def ttft_s(self) -> float | None:
        return self.token_s[0] - self.arrival_s if self.token_s else None

    @property
    def itl_steps(self) -> list[int]:
        return [b - a for a, b in zip(self.token_steps, self.token_steps[1:])]

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_s, self.token_s[1:])]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


class EngineStats:
    def __init__(self) -> None:
        self.steps: list[StepStats] = []
        self.requests: dict[str, RequestTimes] = {}

    def on_arrival(self, request_id: str, step: int, now: float) -> None:
        self.requests[request_id] = RequestTimes(step, now)

    def on_token(self, request_id: str, step: int, now: float) -> None:
        rt = self.requests[request_id]
        rt.token_steps.append(step)
        rt.token_s.append(now)

    def summary(self) -> dict[str, float]:
        """TTFT and inter-token latency (steps and seconds), tokens, steps, throughput, preemptions, hits."""
        reqs = [r for r in self.requests.values() if r.token_steps]
        out: dict[str, float] = {"requests": len(reqs), "steps": len(self.steps),
                                 "output_tokens": sum(len(r.token_steps) for r in reqs),
                                 "preemptions": sum(s.num_preempted for s in self.steps),
                                 "prefix_hit_tokens": sum(s.num_prefix_hit_tokens for s in self.steps)}
        wall = sum(s.seconds for s in self.steps)
        out["seconds"] = wall
        out["tokens_per_s"] = out["output_tokens"] / wall if wall > 0 else 0.0
        if reqs:
            ttft_steps = [r.ttft_steps for r in reqs]
            ttft_s = [r.ttft_s for r in reqs]
            out.update(ttft_steps_mean=statistics.fmean(ttft_steps), ttft_steps_max=max(ttft_steps),
                       ttft_s_mean=statistics.fmean(ttft_s), ttft_s_p50=_pct(ttft_s, 0.5), ttft_s_max=max(ttft_s))
            itl_steps = [x for r in reqs for x in r.itl_steps]
            itl_s = [x for r in reqs for x in r.itl_s]
            if itl_s:
                out.update(itl_steps_mean=statistics.fmean(itl_steps), itl_steps_max=max(itl_steps),
                           itl_s_mean=statistics.fmean(itl_s), itl_s_p50=_pct(itl_s, 0.5), itl_s_p90=_pct(itl_s, 0.9))
        return out

    def format_table(self) -> str:
        head = (f"{'step':>4} {'run':>4} {'wait':>4} {'reqs':>4} {'tokens':>6} {'decode':>6} {'preempt':>7} "
                f"{'hits':>5} {'kv%':>5} {'done':>4} {'ms':>8}")
        rows = [head]
        for s in self.steps:
            rows.append(f"{s.step:>4} {s.num_running:>4} {s.num_waiting:>4} {s.num_scheduled_reqs:>4} "
                        f"{s.num_scheduled_tokens:>6} {s.num_decode_reqs:>6} {s.num_preempted:>7} "
                        f"{s.num_prefix_hit_tokens:>5} {100 * s.kv_usage:>5.1f} {s.num_finished:>4} "
                        f"{1e3 * s.seconds:>8.2f}")
        return "\n".join(rows)

    def format_summary(self, label: str = "") -> str:
        s = self.summary()
        lines = [f"latency summary{(' (' + label + ')') if label else ''}:"]
        lines.append(f"  {int(s['requests'])} requests, {int(s['output_tokens'])} tokens in {int(s['steps'])} steps, "
                     f"{s['seconds']:.3f} s, {s['tokens_per_s']:.2f} tokens/s")
        if "ttft_steps_mean" in s:
            lines.append(f"  TTFT: {s['ttft_steps_mean']:.2f} steps mean ({s['ttft_steps_max']} max), "
                         f"{1e3 * s['ttft_s_mean']:.1f} ms mean, {1e3 * s['ttft_s_p50']:.1f} ms p50, "
                         f"{1e3 * s['ttft_s_max']:.1f} ms max")
        if "itl_s_mean" in s:
            lines.append(f"  inter-token: {s['itl_steps_mean']:.2f} steps mean ({s['itl_steps_max']} max), "
                         f"{1e3 * s['itl_s_mean']:.1f} ms mean, {1e3 * s['itl_s_p50']:.1f} ms p50, "
                         f"{1e3 * s['itl_s_p90']:.1f} ms p90")
        lines.append(f"  preemptions: {int(s['preemptions'])}, prefix-cache hit tokens: {int(s['prefix_hit_tokens'])}")
        return "\n".join(lines)
