"""LongCat-Flash's compute-budget controller: per-expert router bias over synthetic logits.

Each step routes a batch of tokens (top-k on softmax score + bias, over FFN and zero-computation
experts) and updates the FFN experts' biases with the paper's rule, optionally as a PID:
    e_i = K_e / (K * N) - T_i / (K * T_all)          (zero experts: no bias)
    b_i += mu * e_i + ki * sum(e_i) + kd * (e_i - e_i_prev)
K_e is the target of real experts per token, K the top-k, N the FFN experts, T_i the tokens sent
to expert i. Expert affinities start skewed (log-normal) and zero experts start unpopular.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from simulator.errors import MoesimError


@dataclass(frozen=True)
class BiasConfig:
    """Controller and synthetic-router settings."""

    n_ffn: int = 512
    n_zero: int = 256
    top_k: int = 12
    target_real: float = 8.0
    tokens_per_step: int = 2048
    steps: int = 400
    mu: float = 0.2
    ki: float = 0.0
    kd: float = 0.0
    skew: float = 1.0              # sigma of the log-normal FFN expert affinity
    zero_offset: float = -1.0      # zero experts' starting affinity (negative: unpopular)
    token_noise: float = 1.0       # per-token logit noise
    window: int = 40               # steps over which expert load is averaged
    seed: int = 0

    def check(self) -> None:
        """Refuse settings that cannot work, naming the field."""
        for name in ("target_real", "mu", "ki", "kd", "skew", "token_noise"):
            v = getattr(self, name)
            if not math.isfinite(v):
                flag = {"target_real": "--target"}.get(name, f"--{name.replace('_', '-')}")
                raise MoesimError(flag, f"{v} is not a finite number", "pass a finite number")
        if self.n_zero < 0:
            raise MoesimError("--zero-experts", f"{self.n_zero} is negative",
                              "pass 0 or more zero-computation experts")
        if self.mu < 0 or self.ki < 0 or self.kd < 0:
            raise MoesimError("--mu/--ki/--kd", "a negative gain pushes the bias the wrong way",
                              "use gains of 0 or more")
        if self.tokens_per_step * (self.n_ffn + self.n_zero) > 5e8:
            raise MoesimError("--tokens", f"{self.tokens_per_step} tokens x "
                              f"{self.n_ffn + self.n_zero} experts of logits per step is more "
                              "than this command holds (5e8)", "lower --tokens or the experts")
        if self.target_real > self.top_k:
            raise MoesimError("--target", f"target {self.target_real} real experts per token "
                              f"exceeds top-k {self.top_k}", "use a target between 0 and top-k")
        if self.target_real < 0:
            raise MoesimError("--target", "negative target", "use a target between 0 and top-k")
        flags = {"n_ffn": "--ffn-experts", "top_k": "--top-k", "tokens_per_step": "--tokens",
                 "steps": "--steps", "window": "--window"}
        for name, flag in flags.items():
            if getattr(self, name) <= 0:
                raise MoesimError(flag, f"{getattr(self, name)} is not positive",
                                  "pass a positive integer")
        if self.steps * self.tokens_per_step * (self.n_ffn + self.n_zero) > MAX_WORK:
            raise MoesimError("--steps", f"{self.steps} steps x {self.tokens_per_step} tokens x "
                              f"{self.n_ffn + self.n_zero} experts is more routing than this "
                              f"command runs ({MAX_WORK:.0e} logits)",
                              "lower --steps or --tokens")
        if self.skew < 0 or self.token_noise < 0:
            raise MoesimError("--skew", "negative skew", "use a skew of 0 or more")
        if self.top_k > self.n_ffn + self.n_zero:
            raise MoesimError("--top-k", "exceeds the number of experts", "lower top-k")


MAX_WORK = 1e12          # logits routed over the whole run (~an hour on 2 cores)


@dataclass(frozen=True)
class BiasTrace:
    """Per step: mean and std of real experts per token, max/mean FFN expert load."""

    mean_real: np.ndarray
    std_real: np.ndarray
    load_max_over_mean: np.ndarray
    final_load: np.ndarray          # FFN expert load averaged over the last window
    final_bias: np.ndarray

    def first_step_settled(self, target: float, tol_mean: float = 0.2,
                           tol_load: float = 1.3) -> Optional[int]:
        """First step from which the mean stays within tol and max/mean load below tol_load."""
        ok = (np.abs(self.mean_real - target) <= tol_mean) & (self.load_max_over_mean < tol_load)
        for i in range(len(ok)):
            if ok[i:].all():
                return i
        return None


def simulate_bias(cfg: BiasConfig,
                  progress: Callable[[int], None] | None = None) -> BiasTrace:
    """Run the controller for cfg.steps steps."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    n_all = cfg.n_ffn + cfg.n_zero
    affinity = np.concatenate([cfg.skew * rng.standard_normal(cfg.n_ffn),
                               np.full(cfg.n_zero, cfg.zero_offset)])
    bias = np.zeros(n_all)
    integral = np.zeros(cfg.n_ffn)
    prev_err = np.zeros(cfg.n_ffn)
    history = np.zeros((cfg.window, cfg.n_ffn))
    means, stds, ratios = [], [], []
    k = cfg.top_k
    for step in range(cfg.steps):
        noise = rng.standard_normal((cfg.tokens_per_step, n_all), dtype=np.float32)
        logits = affinity[None, :].astype(np.float32) + np.float32(cfg.token_noise) * noise
        logits -= logits.max(axis=1, keepdims=True)
        score = np.exp(logits)
        score /= score.sum(axis=1, keepdims=True)
        chosen = np.argpartition(-(score + bias[None, :].astype(np.float32)), k - 1,
                                 axis=1)[:, :k]
        real = (chosen < cfg.n_ffn).sum(axis=1)
        counts = np.bincount(chosen[chosen < cfg.n_ffn], minlength=cfg.n_ffn).astype(float)
        err = cfg.target_real / (k * cfg.n_ffn) - counts / (k * cfg.tokens_per_step)
        integral += err
        bias[:cfg.n_ffn] += cfg.mu * err + cfg.ki * integral + cfg.kd * (err - prev_err)
        prev_err = err
        history[step % cfg.window] = counts
        window = history[:min(step + 1, cfg.window)].mean(axis=0)
        means.append(real.mean())
        stds.append(real.std())
        ratios.append(window.max() / window.mean() if window.mean() > 0 else float("inf"))
        if progress:
            progress(step)
    return BiasTrace(np.array(means), np.array(stds), np.array(ratios), window, bias[:cfg.n_ffn])


def bias_figure(trace: BiasTrace, cfg: BiasConfig):
    """Plotly figure: real experts per token (mean, std) and expert load balance over steps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    steps = np.arange(1, len(trace.mean_real) + 1)
    fig = make_subplots(rows=3, cols=1, subplot_titles=(
        "real experts per token", "max / mean FFN expert load (window of "
        f"{cfg.window} steps)", "final FFN expert load (sorted)"))
    fig.add_trace(go.Scatter(x=steps, y=trace.mean_real, name="mean"), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=trace.std_real, name="std"), row=1, col=1)
    fig.add_hline(y=cfg.target_real, line_dash="dash", row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=trace.load_max_over_mean, name="max/mean load"),
                  row=2, col=1)
    fig.add_hline(y=1.3, line_dash="dot", row=2, col=1)
    fig.add_trace(go.Bar(y=np.sort(trace.final_load)[::-1], name="tokens per expert"),
                  row=3, col=1)
    fig.update_layout(height=900, title="Router bias controller (LongCat-Flash style)")
    for row, (x, y) in enumerate((("controller step", "real experts per token"),
                                  ("controller step", "max / mean expert load"),
                                  ("FFN expert (by load)", "tokens per expert")), start=1):
        fig.update_xaxes(title_text=x, row=row, col=1)
        fig.update_yaxes(title_text=y, row=row, col=1)
    return fig
