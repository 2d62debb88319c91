"""Schemas of a serving deployment: pools, arrivals, request lengths, SLOs."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from simulator.schema.base import Strict
from simulator.schema.deployment import ParallelPlan


MAX_TOKENS = 10 ** 8      # a request length beyond any model's context window


class PoolSpec(Strict):
    """One pool of GPUs. Decode: plan, schedule, max sequences per device; prefill: a token budget."""

    plan: Optional[ParallelPlan] = Field(None, description="default: the workload's plan")
    schedule: Optional[str] = Field(None, description="default: the workload's schedule")
    max_batch_per_device: Optional[int] = Field(
        None, gt=0, description="decode: sequences per attention group at most (unset: the "
        "engine preset's max running requests; 96 with runtime.preset: none)")
    max_tokens_per_device: int = Field(16384, gt=0, description="prefill: tokens per step")


class LengthSpec(Strict):
    """A distribution of token counts: fixed, exponential or lognormal about `mean` (capped at
    `max`), or uniform over the integers `min`..`max` (benchmark clients' random lengths:
    vLLM's and SGLang's bench_serving with `--random-range-ratio r` draw from r x L to L)."""

    mean: Optional[float] = Field(None, gt=0, le=MAX_TOKENS, description="tokens (uniform: "
                                  "(min + max) / 2, which it may be left to)")
    dist: Literal["fixed", "exponential", "lognormal", "uniform"] = "fixed"
    sigma: float = Field(0.5, ge=0, description="lognormal sigma")
    min: Optional[int] = Field(None, gt=0, le=MAX_TOKENS, description="uniform: the shortest")
    max: Optional[int] = Field(None, gt=0, le=MAX_TOKENS, description="a cap; uniform: the "
                               "longest")

    @model_validator(mode="before")
    @classmethod
    def _uniform_mean(cls, data):
        if isinstance(data, dict) and data.get("dist") == "uniform" and data.get("mean") is None:
            lo, hi = data.get("min"), data.get("max")
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                data = {**data, "mean": (lo + hi) / 2}
        return data

    @model_validator(mode="after")
    def _mean_or_range(self) -> "LengthSpec":
        if self.dist != "uniform":
            if self.mean is None:
                raise ValueError(f"dist: {self.dist} needs mean (tokens)")
            if self.min is not None:
                raise ValueError(f"min applies to dist: uniform only, not {self.dist}; drop it "
                                 "or write dist: uniform")
            return self
        if self.min is None or self.max is None:
            raise ValueError("dist: uniform needs min and max (the shortest and longest "
                             "request, tokens)")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); swap them")
        middle = (self.min + self.max) / 2
        if self.mean is None or abs(self.mean - middle) > 0.5:
            raise ValueError(f"mean {self.mean} is not (min + max) / 2 = {middle:g}, the mean "
                             "of a uniform draw; leave mean out")
        return self


CLOSED_REQUESTS_PER_CLIENT = 4     # closed loop: requests sent in all, per client, by default


class ArrivalSpec(Strict):
    """Request arrivals: Poisson, bursty gamma, a trace file (CSV/JSONL), a closed loop of
    `concurrency` clients, each sending its next request when its last one ends (benchmark
    clients with --max-concurrency), all starting at t = 0, or an offline burst: `requests`
    requests all queued at t = 0 and run to completion (trtllm-bench, SGLang's
    bench_offline_throughput); a trace whose arrivals are all at t = 0 runs the same way."""

    process: Literal["poisson", "gamma", "trace", "closed", "burst"] = "poisson"
    rate_per_s: float = Field(10.0, gt=0)
    gamma_cv: float = Field(2.0, gt=0, description="coefficient of variation of gaps (gamma)")
    trace: Optional[str] = Field(None, description="CSV or JSONL: arrival_s, input_tokens, "
                                 "output_tokens (a relative path is taken from the workload "
                                 "file's folder; a UTF-8 byte-order mark is fine)")
    duration_s: float = Field(60.0, gt=0)
    concurrency: Optional[int] = Field(None, gt=0, le=10 ** 6,
                                       description="closed: clients (requests in flight)")
    requests: Optional[int] = Field(None, gt=0, le=2_000_000, description="closed: requests "
                                    "sent in all (default 4 per client); burst: the requests "
                                    "queued at t = 0; the run ends when the last one finishes")

    @model_validator(mode="after")
    def _trace_given(self) -> "ArrivalSpec":
        if self.process == "trace" and not self.trace:
            raise ValueError("process: trace needs a trace file path")
        if self.process == "closed" and self.concurrency is None:
            raise ValueError("process: closed needs concurrency (the number of clients)")
        if self.process == "burst" and self.requests is None:
            raise ValueError("process: burst needs requests (how many are queued at t = 0)")
        return self

    @property
    def runs_to_completion(self) -> bool:
        """Closed loops and offline bursts: no arrival horizon; the run ends with the last
        request."""
        return self.process in ("closed", "burst")

    @property
    def closed_requests(self) -> int:
        """Requests a closed loop sends in all (at least one per client); a burst's."""
        if self.process == "burst":
            assert self.requests is not None
            return self.requests
        assert self.concurrency is not None
        return max(self.requests or CLOSED_REQUESTS_PER_CLIENT * self.concurrency,
                   self.concurrency)

    @property
    def clients(self) -> int:
        """Requests in flight from the start: a closed loop's clients, a burst's requests."""
        return self.closed_requests if self.process == "burst" else int(self.concurrency or 0)


class SLOSpec(Strict):
    """Service-level objectives for goodput."""

    ttft_ms: float = Field(2000.0, gt=0)
    tpot_ms: float = Field(50.0, gt=0)


class BatchWaitSpec(Strict):
    """Delayed batching of new prompts (TensorRT-LLM's batch_wait_timeout_iters and
    batch_wait_max_tokens_ratio, off by default): while requests decode, waiting prompts are
    held until `steps` steps have held them or the prompts' and the decode tokens reach
    `tokens_ratio` of the step's token budget. Not applied under attention data parallelism,
    which TensorRT-LLM skips it under."""

    steps: int = Field(gt=0, description="steps new prompts may be held")
    tokens_ratio: float = Field(gt=0, le=1, description="share of the step's token budget "
                                "the waiting prompts and the decode tokens must reach to be "
                                "taken before `steps`")


class ServingSpec(Strict):
    """A serving deployment: disaggregated prefill/decode pools or one colocated pool."""

    mode: Literal["disaggregated", "colocated"] = "disaggregated"
    decode: PoolSpec = PoolSpec()
    prefill: PoolSpec = PoolSpec()
    chunk_tokens_per_device: Optional[int] = Field(
        None, gt=0, description="colocated: prompt tokens an attention group takes into a step "
        "(unset: the engine preset's chunked prefill; 2048 with runtime.preset: none)")
    recv_interval: int = Field(
        1, ge=1, le=10000, description="colocated: the scheduler takes in new requests only "
        "every this many decode steps (SGLang's --scheduler-recv-interval), at once after a "
        "step that prefilled and while idle; 1: every step")
    batch_wait: Optional[BatchWaitSpec] = Field(
        None, description="colocated: hold new prompts while requests decode (TensorRT-LLM's "
        "delayed batching); unset: prompts are taken at the first step with room")
    arrivals: ArrivalSpec = ArrivalSpec()
    input_tokens: LengthSpec = LengthSpec(mean=4000)
    output_tokens: LengthSpec = LengthSpec(mean=500)
    slo: SLOSpec = SLOSpec()
    max_queue: int = Field(100000, gt=0, description="waiting requests beyond this are rejected")
    admission: str = Field("fcfs", min_length=1, description="decode admission policy "
                           "(simulator/serving/pools.py ADMISSION_POLICIES): fcfs")
    drain_s: float = Field(3600.0, ge=0, description="after arrivals stop, finish in-flight work")
