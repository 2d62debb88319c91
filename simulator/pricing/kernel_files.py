"""GPU kernel measurement files -> fit rows: published ones (shared/data/gpu-kernels, InferSim's
bench_data layout) and a user's own, in one format.

Layout under a root folder: `gemm/DEVICE/data.csv` (m, k, n, latency_us: a dense GEMM of m
tokens through a k -> n weight; FP8 unless a `dtype` column says bf16, fp16 or fp32, one
precision per file) and `grouped_gemm/{decode,prefill}/DEVICE/data.csv`
(num_local_experts, hidden_size, intermediate_size, tokens_per_expert, up_proj_us,
down_proj_us: FP8 grouped GEMMs of the local experts); attention cores
`{mla,mha}/decode/DEVICE/H-A-B.csv` (dtype, kv_dtype, batch_size, kv_len, latency_us) and
`{mla,mha}/prefill/DEVICE/H-A-B.csv` (dtype, seq_len, latency_us; causal; an optional
batch_size column, else one prompt), where the file name
gives the head layout: MHA/GQA query heads, KV heads, head dim; MLA decode heads, KV latent
rank, rope dim; MLA prefill heads, value head dim, rope dim (query/key head = value + rope).
Other kernel folders (dsa, gdn) are recognised and listed as not fitted. Every row is checked
before anything is fitted: a bad file names its path, row and column.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from simulator.errors import MoesimError
from simulator.loading import read_text_file
from simulator.pricing.fits import Row

FITTED = ("gemm", "grouped_gemm", "mla", "mha")
NOT_FITTED = ("dsa", "gdn")                    # sparse and linear attention cores
MIN_ROWS = 5                                   # 4 folds: each fit keeps 3+ rows, holds 1-2 out
GEMM_COLUMNS = ("m", "k", "n", "latency_us")
GROUPED_COLUMNS = ("num_local_experts", "hidden_size", "intermediate_size", "tokens_per_expert",
                   "up_proj_us", "down_proj_us")
DECODE_COLUMNS = ("batch_size", "kv_len", "latency_us")
PREFILL_COLUMNS = ("seq_len", "latency_us")
FP8_BYTES, OUT_BYTES = 1.0, 2.0                # FP8 inputs and weights, BF16 outputs
BF16_BYTES = 2.0                               # attention files: BF16 queries, KV and outputs


DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp32": 4.0}


def _table(path: Path, columns: tuple[str, ...],
           optional: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, values) of every row: numbers, and for a `kv_dtype` column its bytes per
    element; a missing column, a non-number, a non-positive value, an unknown dtype: one error
    naming file, row and column."""
    reader = csv.DictReader(io.StringIO(read_text_file(path, "measurement file"), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise MoesimError(f"{path} header", f"missing column {', '.join(missing)}",
                          f"the first line must name {', '.join(columns)}")
    out = []
    for line, raw in enumerate(reader, start=2):
        row: dict = {}
        for col in ("kv_dtype", "dtype"):
            if col not in (reader.fieldnames or []):
                continue
            dtype = (raw.get(col) or "").strip()
            if dtype not in DTYPE_BYTES:
                raise MoesimError(f"{path} row {line} column {col}", f"{dtype!r} is not a "
                                  "known precision", f"write one of {', '.join(DTYPE_BYTES)}")
            row[col] = dtype
        for c in columns + tuple(o for o in optional if o in (reader.fieldnames or [])):
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
        dtypes = {r.get("dtype", "fp8") for _, r in table}
        if len(dtypes) > 1:
            raise MoesimError(f"{gemm} column dtype", f"mixes {', '.join(sorted(dtypes))}",
                              "keep one precision per GEMM file (one table per precision)")
        for _, r in table:
            m, k, n = r["m"], r["k"], r["n"]
            b = DTYPE_BYTES[r.get("dtype", "fp8")]
            rows["gemm"].append(Row("gemm", r["latency_us"] * 1e-6, 2 * m * n * k,
                                    (m * k + k * n) * b + m * n * max(b, OUT_BYTES),
                                    {"m": m, "n": n, "k": k, "dtype": r.get("dtype", "fp8")}))
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
    skipped: list[str] = []
    for kernel, (found, used) in _attention_rows(root, device, skipped).items():
        rows[kernel], sources[kernel] = found, "; ".join(used)
    for kind, found in rows.items():
        if found and len(found) < MIN_ROWS:
            raise MoesimError(f"{sources[kind]}", f"{len(found)} {kind} measurements, too few "
                              f"to fit and hold out (at least {MIN_ROWS})", "measure more shapes")
    if not any(rows.values()):
        raise MoesimError("--from-measurements", f"no gemm, grouped_gemm, mla or mha files for device "
                          f"'{device}' under {root}",
                          f"expected {root}/gemm/{device}/data.csv or "
                          f"{root}/grouped_gemm/decode/{device}/data.csv")
    not_fitted = [f"{k} kernel files" for k in kinds if k in NOT_FITTED] + skipped
    return rows, sources, not_fitted


def _layout(path: Path) -> tuple[int, int, int]:
    """The three numbers of an attention file's name (H-A-B.csv); refused otherwise."""
    parts = path.stem.split("-")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise MoesimError(f"{path} name", "an attention file is named by its head layout, "
                          "three positive whole numbers", "rename it like 32-4-128.csv "
                          "(heads-kv_heads-head_dim; MLA: heads-kv_lora-rope)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def attention_shape(kernel: str, layout: tuple[int, int, int], batch: float,
                    length: float, kv_bytes: float = BF16_BYTES) -> tuple[float, float]:
    """(FLOPs, HBM bytes) of one attention core call, counted as the op graph counts them
    (simulator/graph/model.py): decode attends `batch` single-token queries to `length` keys;
    prefill is one causal prompt of `length` tokens."""
    a, b, c = layout
    if kernel == "gqa_decode":          # a query heads, b KV heads, head dim c
        flops = batch * length * 4 * a * c
        nbytes = batch * length * 2 * b * c * kv_bytes + 2 * batch * a * c * BF16_BYTES
    elif kernel == "gqa_prefill":       # `batch` prompts of `length` tokens
        pairs = batch * length * (length + 1) / 2
        flops = pairs * 4 * a * c
        nbytes = batch * (length * 2 * b * c * kv_bytes + 2 * length * a * c * BF16_BYTES)
    elif kernel == "mla_decode":        # a heads over a latent of b plus c rope dims
        flops = batch * length * 2 * a * (2 * b + c)
        nbytes = batch * length * (b + c) * kv_bytes + batch * a * (2 * b + c) * BF16_BYTES
    elif kernel == "mla_prefill":       # a heads, value head b, query/key head b + c
        pairs = batch * length * (length + 1) / 2
        flops = pairs * 2 * a * (2 * b + c)
        nbytes = batch * length * a * (2 * b + c) * BF16_BYTES
    else:
        raise ValueError(kernel)
    return flops, nbytes


def headerless(path: Path) -> bool:
    """True when a file's first line is a data row (it starts with a dtype or a number), not
    a header: such a file cannot say which column is which."""
    first = read_text_file(path, "measurement file").split("\n", 1)[0].split(",")[0].strip()
    try:
        float(first)
        return True
    except ValueError:
        return first in ("bf16", "fp16", "fp8", "fp32")


def _attention_rows(root: Path, device: str,
                    skipped: list[str]) -> dict[str, tuple[list[Row], list[str]]]:
    """Rows per attention kernel (mla_decode, gqa_decode, mla_prefill, gqa_prefill) from every
    head-layout file of the device, and the files (with line ranges) they came from. A file
    without a header row is left out and named in `skipped`."""
    out: dict[str, tuple[list[Row], list[str]]] = {}
    for folder, attn in (("mla", "mla"), ("mha", "gqa")):
        for phase, columns in (("decode", DECODE_COLUMNS), ("prefill", PREFILL_COLUMNS)):
            kernel = f"{attn}_{phase}"
            for path in sorted((root / folder / phase / device).glob("*.csv")):
                if headerless(path):
                    skipped.append(f"{path} (no header row)")
                    continue
                layout = _layout(path)
                table = _table(path, columns, optional=("batch_size",))
                found, used = out.setdefault(kernel, ([], []))
                for _, r in table:
                    batch = r.get("batch_size", 1.0)
                    length = r["kv_len"] if phase == "decode" else r["seq_len"]
                    flops, nbytes = attention_shape(kernel, layout, batch, length,
                                                    DTYPE_BYTES[r.get("kv_dtype", "bf16")])
                    found.append(Row(kernel, r["latency_us"] * 1e-6, flops, nbytes,
                                     {"batch": batch, "kv_len": length,
                                      "layout": "-".join(map(str, layout))}))
                used.append(f"{path} rows 2-{table[-1][0]}" if table else str(path))
    return out


def write_kernel_files(rows: list[dict], root: Path, device: str, dtype: str) -> list[Path]:
    """`moesim calibrate`'s own GEMM and attention timings in the layout read_kernel_rows
    reads (gemm/DEVICE/data.csv with a dtype column; mha/decode and mha/prefill per head
    layout, from each row's heads and head_dim: MHA, as many KV heads as query heads), so a
    user's runs and published files feed one fitter. Rows are the benchmarks' CSV rows (bench,
    median_s, p_* parameters). Returns the files written."""
    from simulator.atomic import write_text_atomic
    root = Path(root)
    files: dict[Path, tuple[tuple[str, ...], list[tuple]]] = {
        root / "gemm" / device / "data.csv": (
            ("dtype", "m", "k", "n", "latency_us"),
            [(dtype, r["p_m"], r["p_k"], r["p_n"], float(r["median_s"]) * 1e6)
             for r in rows if r["bench"] == "gemm"])}
    for r in rows:
        if r["bench"] not in ("attention_decode", "attention_prefill"):
            continue
        name = f"{r['p_heads']}-{r['p_heads']}-{r['p_head_dim']}.csv"
        us = float(r["median_s"]) * 1e6
        if r["bench"] == "attention_decode":
            files.setdefault(root / "mha" / "decode" / device / name, (
                ("dtype", "kv_dtype", "batch_size", "kv_len", "latency_us"), []))[1].append(
                (dtype, dtype, r["p_batch"], r["p_ctx"], us))
        else:
            files.setdefault(root / "mha" / "prefill" / device / name, (
                ("dtype", "batch_size", "seq_len", "latency_us"), []))[1].append(
                (dtype, r["p_batch"], r["p_ctx"], us))
    written = []
    for path, (header, data) in files.items():
        if not data:
            continue
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(data)
        write_text_atomic(path, buf.getvalue())
        written.append(path)
    return written
