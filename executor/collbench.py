"""Microbenchmarks across processes (torch.distributed: gloo on CPU, nccl on CUDA): collectives
over message sizes, GEMMs beside all-to-alls (interference) and the slowest rank's lag (jitter)."""
from __future__ import annotations

import os
import socket
import statistics
import tempfile
import threading
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.microbench import (Grid, Measurement, backend_for, pin_rank, sync_for, time_fn,
                                 write_rows)

INTERFERENCE_A2A = 10
INTERFERENCE_GEMMS = 20


def free_port() -> int:
    """A TCP port nobody listens on right now (a busy one is never reused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _coll_worker(rank: int, world: int, port: int, device: str, grid: Grid, threads: int,
                 out_path: str) -> None:
    if device == "cpu":
        pin_rank(rank, threads)
    else:
        torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend_for(device), rank=rank, world_size=world)
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dev = f"cuda:{rank % torch.cuda.device_count()}" if device == "cuda" else "cpu"
    sync = sync_for(device)
    rows: list[Measurement] = []
    for nbytes in grid.coll_bytes:
        n = max(world, nbytes // 4 // world * world)
        x = torch.randn(n, device=dev)
        y = torch.empty_like(x)
        med, iqr = _dist_time(lambda: dist.all_to_all_single(y, x), sync, grid)
        rows.append(Measurement("all_to_all", {"bytes": n * 4, "ranks": world}, med, iqr, 0.0,
                                float(n * 4 * (world - 1) / world)))
        part = torch.randn(n // world, device=dev)
        full = torch.empty(n // world * world, device=dev)
        med, iqr = _dist_time(lambda: _all_gather(full, part), sync, grid)
        rows.append(Measurement("all_gather", {"bytes": n * 4, "ranks": world}, med, iqr, 0.0,
                                float(n * 4 * (world - 1) / world)))
        med, iqr = _dist_time(lambda: _reduce_scatter(part, full), sync, grid)
        rows.append(Measurement("reduce_scatter", {"bytes": n * 4, "ranks": world}, med, iqr,
                                0.0, float(n * 4 * (world - 1) / world)))
    rows.append(_interference(world, dev, sync, grid))
    rows.append(_straggling(world, dev, sync, grid))
    dist.barrier()
    if rank == 0:
        write_rows(out_path, rows)
    dist.destroy_process_group()


INTERFERENCE_ROUNDS = 5
JITTER_ITERATIONS = 40


def _interference(world: int, dev: str, sync: Callable[[], None], grid: Grid) -> Measurement:
    """A batch of GEMMs alone, a batch of all-to-alls alone, then both at once (the all-to-alls
    on a thread, as an async work handle runs them), in alternating rounds so that a drifting
    machine moves all three alike. The engine slows compute to (1 - f) while a collective runs,
    so both-at-once takes alone + f x comm: f = (both - alone) / comm, median over rounds."""
    a = torch.randn(512, 512, device=dev)
    b = torch.randn(512, 512, device=dev)
    x = torch.randn(1 << 20, device=dev)
    y = torch.empty_like(x)
    comm_group = dist.new_group(list(range(world)))

    def gemms() -> None:
        for _ in range(INTERFERENCE_GEMMS):
            a @ b
        sync()

    def comms() -> None:                  # a fixed count on every rank: no rank is left waiting
        for _ in range(INTERFERENCE_A2A):
            dist.all_to_all_single(y, x, group=comm_group)
        sync()

    def timed(fn: Callable[[], None]) -> float:
        dist.barrier()
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def both() -> None:
        thread = threading.Thread(target=comms)
        thread.start()
        gemms()
        thread.join()

    gemms()
    comms()
    alone, comm, together = [], [], []
    for _ in range(INTERFERENCE_ROUNDS):
        alone.append(timed(gemms))
        comm.append(timed(comms))
        together.append(timed(both))
    fracs = [(t - g) / c for g, c, t in zip(alone, comm, together)]
    return Measurement("interference", {"ranks": world, "alone_s": statistics.median(alone),
                                        "comm_s": statistics.median(comm),
                                        "fraction": statistics.median(fracs)},
                       statistics.median(together), 0.0,
                       INTERFERENCE_GEMMS * 2.0 * 512 ** 3, 0.0)


def _straggling(world: int, dev: str, sync: Callable[[], None], grid: Grid) -> Measurement:
    """The same compute segment on every rank at once, started together, many times: how much
    the slowest rank's time typically (median) exceeds the ranks' mean (what a collective waits
    for; validate's measured times are medians too)."""
    a = torch.randn(512, 1024, device=dev)
    b = torch.randn(1024, 1024, device=dev)

    def segment() -> None:
        for _ in range(3):
            a @ b
    for _ in range(grid.warmup):
        segment()
    sync()
    excess, means = [], []
    for _ in range(JITTER_ITERATIONS):
        dist.barrier()
        t = time.perf_counter()
        segment()
        sync()
        mine = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
        every = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(every, mine)
        ts = [float(e) for e in every]
        mean = sum(ts) / len(ts)
        means.append(mean)
        excess.append(max(ts) / mean - 1.0)
    return Measurement("straggling", {"ranks": world, "excess": statistics.median(excess)},
                       statistics.median(means), 0.0, 3 * 2.0 * 512 * 1024 * 1024, 0.0)


def _all_gather(out: torch.Tensor, inp: torch.Tensor) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp)


def _reduce_scatter(out: torch.Tensor, inp: torch.Tensor) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, inp)


def _dist_time(fn: Callable[[], object], sync: Callable[[], None],
               grid: Grid) -> tuple[float, float]:
    def step() -> None:
        dist.barrier()
        fn()
    return time_fn(step, sync, grid.warmup, grid.repeats)


def bench_collectives(device: str, ranks: int, grid: Grid, threads: int) -> list[dict]:
    """Run the collective and interference benchmarks in `ranks` processes; rank 0's rows."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "coll.csv")
        mp.start_processes(_coll_worker, args=(ranks, free_port(), device, grid, threads, path),
                           nprocs=ranks, join=True, start_method="spawn")
        import csv
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


