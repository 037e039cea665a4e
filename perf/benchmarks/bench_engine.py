"""The engine on a CPU: one ``LLMEngine.step()`` on the reference backend, and the scheduler's per-step cost."""
from __future__ import annotations

from . import _common  # noqa: F401 - importing it switches the Triton interpreter on before the engine imports triton


class TimeEngineStep:
    timeout = 300

    def setup(self):
        from engine import LLMEngine, ModelConfig, SamplingParams  # a missing engine is an error, not a skip
        self.engine = LLMEngine(ModelConfig(), backend="reference")
        params = SamplingParams(max_tokens=900, ignore_eos=True)
        for i in range(8):
            self.engine.add_request(f"benchmark prompt {i}: " + "x" * (8 * i), params)
        self.engine.step()  # admit and prefill: every timed step after this is a decode step of 8 sequences

    def time_engine_step(self):
        self.engine.step()


class TrackSchedulerOverhead:
    """``perf.scheduler_overhead`` (scheduler + block manager, stub runner): milliseconds per step."""

    unit = "ms"
    timeout = 600

    def setup_cache(self):
        try:
            from perf.scheduler_overhead import measure  # deferred: asv imports to list; setup loads
        except ImportError as exc:
            return {"missing": str(exc)}
        return measure(repeats=1)

    def setup(self, res):
        if "missing" in res:
            raise NotImplementedError(res["missing"])

    def track_decode_256_median_ms(self, res):
        return res["decode_256_median_ms"]

    def track_burst_64_median_ms(self, res):
        return res["burst_64_median_ms"]
