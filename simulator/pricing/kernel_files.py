"""GPU kernel measurement files -> fit rows: published ones (shared/data/gpu-kernels, InferSim's
bench_data layout) and a user's own, in one format.

Layout under a root folder: `gemm/DEVICE/data.csv` (m, k, n, latency_us: an FP8 dense GEMM of m
tokens through a k -> n weight) and `grouped_gemm/{decode,prefill}/DEVICE/data.csv`
(num_local_experts, hidden_size, intermediate_size, tokens_per_expert, up_proj_us,
down_proj_us: FP8 grouped GEMMs of the local experts). Other kernel folders (attention cores:
mla, mha, dsa; gdn) are recognised and listed as not fitted. Every row is checked before
anything is fitted: a bad file names its path, row and column.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from simulator.errors import MoesimError
from simulator.loading import read_text_file
from simulator.pricing.fits import Row

FITTED = ("gemm", "grouped_gemm")
NOT_FITTED = ("mla", "mha", "dsa", "gdn")      # attention and linear-attention cores
MIN_ROWS = 8                                   # a fit with fewer points says nothing held out
GEMM_COLUMNS = ("m", "k", "n", "latency_us")
GROUPED_COLUMNS = ("num_local_experts", "hidden_size", "intermediate_size", "tokens_per_expert",
                   "up_proj_us", "down_proj_us")
FP8_BYTES, OUT_BYTES = 1.0, 2.0                # FP8 inputs and weights, BF16 outputs


def _table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, float]]]:
    """(line number, numbers) of every row; a missing column, a non-number, a non-positive
    value: one error naming file, row and column."""
    reader = csv.DictReader(io.StringIO(read_text_file(path, "measurement file"), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise MoesimError(f"{path} header", f"missing column {', '.join(missing)}",
                          f"the first line must name {', '.join(columns)}")
    out = []
    for line, raw in enumerate(reader, start=2):
        row = {}
        for c in columns:
            text = raw.get(c)
            try:
                v = float(text)
            except (TypeError, ValueError):
                raise MoesimError(f"{path} row {line} column {c}", f"{text!r} is not a number",
                                  "write a number (microseconds for *_us columns)") from None
            if not math.isfinite(v) or v <= 0:
                raise MoesimError(f"{path} row {line} column {c}", f"{text} is not a positive "
                                  "finite number", "every size and latency is > 0")
            row[c] = v
        out.append((line, row))
    return out


def read_kernel_rows(root: Path, device: str) -> tuple[dict[str, list[Row]], dict[str, str],
                                                        list[str]]:
    """Rows per fitted kind, the files (with line ranges) each came from, and the kernel kinds
    present but not fitted. Refuses an unknown kind, and a fitted kind with too few rows."""
    root = Path(root)
    if not root.is_dir():
        raise MoesimError("--from-measurements", f"{root} is not a folder",
                          "pass the folder holding gemm/, grouped_gemm/ ...")
    kinds = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [k for k in kinds if k not in FITTED + NOT_FITTED]
    if unknown:
        raise MoesimError(f"{root}/{unknown[0]}", f"unknown kernel kind '{unknown[0]}'",
                          f"kinds are {', '.join(FITTED + NOT_FITTED)}; move other files out")
    rows: dict[str, list[Row]] = {"gemm": [], "grouped_gemm": []}
    sources: dict[str, str] = {}
    gemm = root / "gemm" / device / "data.csv"
    if gemm.exists():
        table = _table(gemm, GEMM_COLUMNS)
        for _, r in table:
            m, k, n = r["m"], r["k"], r["n"]
            rows["gemm"].append(Row("gemm", r["latency_us"] * 1e-6, 2 * m * n * k,
                                    (m * k + k * n) * FP8_BYTES + m * n * OUT_BYTES,
                                    {"m": m, "n": n, "k": k}))
        sources["gemm"] = f"{gemm} rows 2-{table[-1][0]}" if table else str(gemm)
    parts = []
    for layout in ("decode", "prefill"):
        path = root / "grouped_gemm" / layout / device / "data.csv"
        if not path.exists():
            continue
        table = _table(path, GROUPED_COLUMNS)
        for _, r in table:
            e, h, i, t = (r["num_local_experts"], r["hidden_size"], r["intermediate_size"],
                          r["tokens_per_expert"])
            params = {"tokens_per_expert": t, "hidden": h, "inter": i, "layout": layout}
            # up: gate and up fused (h -> 2i); down: i -> h; every local expert, t tokens each
            rows["grouped_gemm"].append(Row(
                "grouped_gemm", r["up_proj_us"] * 1e-6, 2 * t * e * h * 2 * i,
                e * h * 2 * i * FP8_BYTES + t * e * h * FP8_BYTES + t * e * 2 * i * OUT_BYTES,
                params))
            rows["grouped_gemm"].append(Row(
                "grouped_gemm", r["down_proj_us"] * 1e-6, 2 * t * e * i * h,
                e * i * h * FP8_BYTES + t * e * i * FP8_BYTES + t * e * h * OUT_BYTES, params))
        parts.append(f"{path} rows 2-{table[-1][0]}" if table else str(path))
    if parts:
        sources["grouped_gemm"] = "; ".join(parts)
    for kind, found in rows.items():
        if found and len(found) < MIN_ROWS:
            raise MoesimError(f"{sources[kind]}", f"{len(found)} {kind} measurements, too few "
                              f"to fit and hold out (at least {MIN_ROWS})", "measure more shapes")
    if not any(rows.values()):
        raise MoesimError("--from-measurements", f"no gemm or grouped_gemm files for device "
                          f"'{device}' under {root}",
                          f"expected {root}/gemm/{device}/data.csv or "
                          f"{root}/grouped_gemm/decode/{device}/data.csv")
    not_fitted = [k for k in kinds if k in NOT_FITTED]
    return rows, sources, not_fitted
