"""Requests done with prefill and waiting to join the decode batch, in (ready time, id) order.

A prefill batch makes all its requests ready at one time, so the queue holds one group of ids
per distinct ready time (a heap of times, each group sorted by id when it reaches the front):
pushing a batch and admitting a run of its requests cost per group, not per request.
"""
from __future__ import annotations

import heapq


class ReadyQueue:
    """Ids by (ready time, id); admission reads the front group and drops what it admits."""

    def __init__(self) -> None:
        self._times: list[float] = []            # heap of distinct ready times
        self._groups: dict[float, list[int]] = {}
        self._front: list[int] = []               # the earliest group, sorted by id
        self._front_t = 0.0
        self._pos = 0                              # ids of _front before this are gone
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def push(self, t: float, ids: list[int]) -> None:
        """Make `ids` ready at time `t`."""
        if not ids:
            return
        if self._pos < len(self._front) and t == self._front_t:
            rest = self._front[self._pos:] + list(ids)
            rest.sort()
            self._front, self._pos = rest, 0
        elif t in self._groups:
            self._groups[t].extend(ids)
        else:
            self._groups[t] = list(ids)
            heapq.heappush(self._times, t)
            if self._pos < len(self._front) and t < self._front_t:   # earlier than the front
                self._groups[self._front_t] = self._front[self._pos:]
                heapq.heappush(self._times, self._front_t)
                self._front, self._pos = [], 0
        self._n += len(ids)

    def _load(self) -> None:
        if self._pos >= len(self._front) and self._times:
            t = heapq.heappop(self._times)
            self._front, self._front_t, self._pos = sorted(self._groups.pop(t)), t, 0

    def first_time(self) -> float:
        """Ready time of the earliest waiting request (the queue must not be empty)."""
        self._load()
        return self._front_t

    def front(self, upto: float, limit: int) -> list[int]:
        """Up to `limit` ids of the earliest group, if it is ready by `upto` (else none)."""
        if not self._n:
            return []
        self._load()
        if self._front_t > upto:
            return []
        return self._front[self._pos:self._pos + limit]

    def drop(self, k: int) -> None:
        """Remove the first `k` ids of the front group (admitted)."""
        self._pos += k
        self._n -= k
