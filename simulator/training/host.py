"""A training framework's host launch time per micro-batch, and what it bounds: a stage's
passes, and a forward and backward run merged (Megatron-Core's combined 1F1B)."""
from __future__ import annotations

from simulator.schema import TrainingRuntime


def combined_1f1b_s(rt: TrainingRuntime, layers: int, chunks: int, f_gpu: float,
                    b_gpu: float, hidden: float) -> float:
    """One forward and one backward of a stage run merged (Megatron-Core's combined 1F1B):
    the GPU's work less the all-to-all each hides under the other's compute, never less than
    either pass alone, nor than the host's launches of both (one CPU thread issues them)."""
    host_f, host_b = launch_s(rt, layers, chunks)
    return max(f_gpu + b_gpu - hidden, f_gpu, b_gpu, host_f + host_b)


def launch_s(rt: TrainingRuntime, layers: int, chunks: int) -> tuple[float, float]:
    """The host's seconds for a stage's forward and backward of one micro-batch, its layers
    split into `chunks` model chunks (virtual stages): the runtime's seconds per layer forward
    (times its backward ratio for the backward) plus its seconds per chunk pass, each way."""
    per_pass = rt.host_s_per_pass.value if rt.host_s_per_pass is not None else 0.0
    per_layer = layers * rt.host_s_per_layer_forward.value
    return per_layer + chunks * per_pass, \
        per_layer * rt.backward_host_ratio.value + chunks * per_pass


def host_bound(rt: TrainingRuntime, layers: int, chunks: int, f_s: float, b_s: float,
               w_s: float) -> tuple[float, float, float]:
    """A stage's forward, backward and weight-gradient seconds per micro-batch when no pass
    can be shorter than its host time (launch_s; a stretched backward keeps its
    weight-gradient share)."""
    host_f, host_b = launch_s(rt, layers, chunks)
    if host_b > b_s > 0:
        w_s *= host_b / b_s
    return max(f_s, host_f), max(b_s, host_b), w_s
