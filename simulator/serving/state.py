"""What the serving loop's parts see of each other, as protocols: prefill pools, admission
policies and the summary read the loop's state (LoopState); the loop reads the deployment it
runs (Deployment). Written here so that loop.py, pools.py, result.py and run.py import none of
each other's types: the data flows run -> loop -> pools, result, and nothing points back."""
from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np

from simulator.schema import HardwareProfile, ModelSpec, ServingSpec, Workload
from simulator.serving.arrivals import Requests
from simulator.serving.engine_policy import EnginePolicy
from simulator.serving.ready import ReadyQueue
from simulator.serving.step_model import StepModel


class Deployment(Protocol):
    """A serving deployment as the loop runs it (serving/run.py ServingSim)."""

    spec: ServingSpec
    w: Workload
    model: ModelSpec
    profile: HardwareProfile
    engine: EnginePolicy
    decode: StepModel
    prefill: StepModel
    kv_budget_tokens: float
    kv_token_bytes: float
    mtp_draft: int
    acc: float
    rng: np.random.Generator


class LoopState(Protocol):
    """The event loop's state as pools, policies and the summary read and change it
    (serving/loop.py Loop): per-request lists by id, the decode pool's sums, the queues."""

    sim: Deployment
    engine: EnginePolicy
    r: Requests
    t: float
    step: int
    dp: int
    slots: int
    budget: float
    n_active: int
    sum_ctx: float
    sum_fin: float
    reserve: float                 # the engine's KV reservation share now
    preemptions: int
    prefill_tokens: int
    closed: bool
    input: list[int]
    ctx0: list[float]
    fin0: list[float]
    active: list[int]
    first: Any                     # a list while the loop runs, an array after
    finish: np.ndarray
    rejected: Any
    steps0: np.ndarray
    prefill_q: deque[int]
    ready: ReadyQueue

    def arrive(self, upto: float) -> None:
        """Queue every arrival up to `upto` for prefill."""

    def admit(self, rids: list[int]) -> None:
        """Start decoding `rids` at this step."""

    def decoding(self, rid: int) -> bool:
        """Whether `rid` is in the decode batch now."""

    def preempt(self, rid: int) -> None:
        """Evict a decoding request back to the head of the prefill queue."""
