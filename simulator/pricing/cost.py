"""Dollars per million tokens from GPU-hour prices."""
from __future__ import annotations


def cost_per_million_tokens(price_per_gpu_hour: float, tokens_per_gpu_s: float) -> float:
    """$ per 1e6 tokens for one GPU producing `tokens_per_gpu_s` at `price_per_gpu_hour`."""
    if tokens_per_gpu_s <= 0:
        return float("inf")
    return price_per_gpu_hour / 3600.0 / tokens_per_gpu_s * 1e6
