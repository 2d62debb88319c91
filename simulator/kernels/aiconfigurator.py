"""Measured kernel tables from aiconfigurator-core's data files (the `kernels` extra): its
per-GPU Parquet tables read with pandas, never its estimators or code.

Layout read: aiconfigurator_core/systems/data/<system>/<op family>/<framework>/<version>/
<table>_perf.parquet. Units as the files hold them, turned into seconds here: `latency` is
milliseconds in the GEMM, MoE, attention, MLA, MLA BMM, NCCL and custom all-reduce tables; the
DeepEP columns (`*_us`) are microseconds. NCCL and all-reduce `message_size` counts elements
(2 bytes each: half / bfloat16), checked against NVLink's rate in the tests. Keys measured more
than once in a file (two runs 1-3% apart in several H100 SGLang 0.5.14 tables) are averaged, and
the import says how many.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import MoesimError
from simulator.kernels.grid import KernelGrid
from simulator.kernels.store import KernelSet, version_key

PACKAGE, PACKAGE_VERSION = "aiconfigurator-core", "0.12.0"
FRAMEWORKS = ("sglang", "trtllm", "vllm")
DTYPES = {"bfloat16": "bf16", "float16": "bf16", "half": "bf16", "fp8": "fp8",
          "fp8_block": "fp8_block", "nvfp4": "fp4", "int8": "int8", "fp8_e4m3": "fp8"}
DEEPEP_SMS = 24           # the normal kernels' SM budget read (DeepEP's num_sms in SGLang: 24)


@dataclass
class Read:
    """One op class's tables from one file, with what the import report prints."""

    op_class: str
    grids: list[KernelGrid]
    file: str
    rows: int
    duplicates: int = 0


def data_root() -> Path:
    """The installed package's data folder; a clear error when the extra is missing."""
    try:
        import aiconfigurator_core   # noqa: F401  (located, never called)
    except ImportError:
        raise MoesimError("--from-aiconfigurator", f"the {PACKAGE} package is not installed",
                          "install the kernels extra: pip install -e '.[kernels]'") from None
    import importlib.util
    spec = importlib.util.find_spec("aiconfigurator_core")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "systems" / "data"


def systems(root: Path) -> list[str]:
    """Systems with measured data."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def versions(root: Path, system: str, framework: str, family: str = "gemm") -> list[str]:
    """The versions of `framework` with `family` tables on `system`, oldest first."""
    folder = root / system / family / framework
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=version_key)


def check_choice(system: str, framework: str, version: str | None,
                 root: Path | None = None) -> str:
    """The version `read_set` would read (default: the newest with GEMM tables); a clear
    error naming what exists when the system, framework or version has no data."""
    root = root or data_root()
    if system not in systems(root):
        raise MoesimError("SYSTEM", f"{PACKAGE} {PACKAGE_VERSION} has no data for '{system}'",
                          f"choose one of: {', '.join(systems(root))}")
    if framework not in FRAMEWORKS:
        raise MoesimError("--framework", f"unknown framework '{framework}'",
                          f"choose one of: {', '.join(FRAMEWORKS)}")
    have = versions(root, system, framework)
    if not have:
        there = [f for f in FRAMEWORKS if versions(root, system, f)]
        raise MoesimError("--framework", f"{system} has no {framework} GEMM tables",
                          f"choose one of: {', '.join(there) or 'none'}")
    if version is not None and version not in have:
        raise MoesimError("--version", f"{system} has no {framework} {version} GEMM tables",
                          f"choose one of: {', '.join(have)}")
    return version or have[-1]


def read_set(system: str, framework: str, version: str | None = None,
             root: Path | None = None) -> tuple[KernelSet, list[Read]]:
    """Every measured table of `system` under `framework` (its `version`, default the newest
    with GEMM tables), as one KernelSet, and what was read from each file."""
    root = root or data_root()
    version = check_choice(system, framework, version, root)
    reads = [r for r in _reads(root, system, framework, version) if r is not None]
    notes = [f"{r.file}: {r.duplicates} keys measured twice, averaged" for r in reads
             if r.duplicates]
    if system in ("h100_sxm", "h200_sxm") and any("deepep" in r.op_class and "0.5.6" in r.file
                                                   for r in reads):
        notes.append("the multi-node DeepEP rows (SGLang 0.5.6.post2, 2/4/8 nodes) are "
                     "numerically identical in the package's H100 and H200 folders: one "
                     "measurement under two labels")
    ks = KernelSet(system, framework, version, f"{PACKAGE} {PACKAGE_VERSION}",
                   [g for r in reads for g in r.grids], notes)
    return ks, reads


def _reads(root: Path, system: str, fw: str, version: str):
    base = root / system
    yield _gemm(base, fw, version)
    yield _moe(base, fw, version)
    for phase in ("context", "generation"):
        yield _gqa(base, fw, version, phase)
        yield _mla(base, fw, version, phase)
    yield _mla_bmm(base, fw, version)
    yield _quantize(base, fw, version)
    yield _dynamic_scale(base, fw, version)
    yield _custom_all_reduce(base, fw, version)
    yield _nccl(base)
    if fw == "sglang":           # DeepEP as SGLang runs it, and its experts behind DeepEP
        yield from _deepep(base)
        for phase in ("context", "generation"):
            yield _deepep_moe(base, version, phase)
    else:                        # DeepEP as TensorRT-LLM and vLLM run it
        yield from _moe_a2a(base, fw, version)


def _newest(folder: Path, name: str, at_most: str | None = None) -> Path | None:
    """The newest version folder under `folder` holding file `name` (not newer than
    `at_most` when given, falling back to the oldest newer one)."""
    if not folder.is_dir():
        return None
    vs = sorted((p.name for p in folder.iterdir() if (p / name).is_file()), key=version_key)
    if not vs:
        return None
    if at_most is not None:
        older = [v for v in vs if version_key(v) <= version_key(at_most)]
        vs = older or vs
    return folder / vs[-1] / name


def _merged(folder: Path, name: str, at_most: str, by: str):
    """(rows, files): `name` of every version not newer than `at_most`, each value of column
    `by` (a dtype) from the newest version that measured it (a partial newer collection, such
    as one holding a single dtype, does not hide the older complete one)."""
    if not folder.is_dir():
        return None, []
    import pandas as pd
    vs = sorted((p.name for p in folder.iterdir() if (p / name).is_file()
                 and version_key(p.name) <= version_key(at_most)), key=version_key,
                reverse=True)
    frames, files, seen = [], [], set()
    for v in vs:
        df = _frame(folder / v / name)
        _need(df, folder / v / name, [by])
        df = df[~df[by].isin(seen)]
        if len(df):
            frames.append(df.assign(_file=_rel(folder / v / name)))
            files.append(folder / v / name)
            seen |= set(df[by].unique())
    if not frames:
        return None, []
    return pd.concat(frames, ignore_index=True), files


def _frame(path: Path):
    import pandas as pd
    try:
        return pd.read_parquet(path)
    except Exception as e:      # pyarrow raises its own types for a damaged file
        raise MoesimError("--from-aiconfigurator", f"cannot read {path} ({e})",
                          f"reinstall {PACKAGE}=={PACKAGE_VERSION}") from None


def _need(df, path: Path, cols: list[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MoesimError("--from-aiconfigurator", f"{path} lacks columns {missing}",
                          f"reinstall {PACKAGE}=={PACKAGE_VERSION}, whose layout moesim reads")


def _rel(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[parts.index("data") + 1:]) if "data" in parts else str(path)


def _grids(df, op_class: str, keys: list[str], axes: list[str], value: str, scale: float,
           path: Path, key_map=None) -> tuple[list[KernelGrid], int]:
    """One grid per distinct `keys` combination of `df`; duplicate points averaged. Returns
    the grids and the number of duplicated points."""
    grids, dups = [], 0
    groups = df.groupby(keys, sort=True) if keys else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        key = tuple(key_map(key) if key_map else key)
        g = g[(g[value] > 0) & np.isfinite(g[value])]
        if g.empty:
            continue
        where = g["_file"].iloc[0] if "_file" in g.columns else _rel(path)
        src = f"{PACKAGE} {PACKAGE_VERSION}: {where}"
        mean = g.groupby(axes, sort=True)[value].mean()
        dups += len(g) - len(mean)
        idx = mean.index
        raw = [np.asarray(idx.get_level_values(i), dtype=float) for i in range(len(axes))]
        levels = [np.unique(r) for r in raw]
        if any(lv[0] <= 0 for lv in levels):
            continue
        values = np.full(tuple(len(lv) for lv in levels), np.nan)
        coords = [np.searchsorted(lv, r) for lv, r in zip(levels, raw)]
        values[tuple(coords)] = mean.to_numpy() * scale
        grids.append(KernelGrid(op_class, _plain(key), tuple(axes), tuple(levels), values,
                                f"{src} ({len(g)} rows)"))
    return grids, dups


def _plain(key: tuple) -> tuple:
    """Numpy scalars in a key as Python ones (so keys compare and serialise alike)."""
    return tuple(v.item() if hasattr(v, "item") else v for v in key)


def _one_source(df, cols: list[str]):
    """Where several kernel sources measured the same point (`cols`), keep the source that
    measured the most rows of the file (the engine's main path for that dtype); a point only
    one source measured keeps it (e.g. vLLM's Triton MoE at EP 1, FlashInfer's above)."""
    if "kernel_source" not in df.columns:
        return df
    n = df.groupby("kernel_source")["kernel_source"].transform("size")
    df = df.assign(_n=n)
    best = df.groupby(cols)["_n"].transform("max")
    return df[df["_n"] == best].drop(columns="_n")


def _dtype(v: str) -> str:
    return DTYPES.get(v, v)


def _gemm(base: Path, fw: str, version: str) -> Read | None:
    df, paths = _merged(base / "gemm" / fw, "gemm_perf.parquet", version, "gemm_dtype")
    if df is None:
        return None
    path = paths[0]
    _need(df, path, ["gemm_dtype", "m", "n", "k", "latency"])
    df = _one_source(df, ["gemm_dtype", "m", "n", "k"])
    grids, dups = _grids(df, "gemm", ["gemm_dtype"], ["m", "n", "k"], "latency", 1e-3, path,
                         lambda k: (_dtype(k[0]),))
    return Read("gemm", grids, " + ".join(_rel(p) for p in paths), len(df), dups)


MOE_KEYS = ["moe_dtype", "distribution", "hidden_size", "inter_size", "topk", "num_experts",
            "moe_tp_size"]


def _moe(base: Path, fw: str, version: str) -> Read | None:
    df, paths = _merged(base / "moe" / fw, "moe_perf.parquet", version, "moe_dtype")
    if df is None:
        return None
    path = paths[0]
    _need(df, path, MOE_KEYS + ["moe_ep_size", "num_tokens", "latency"])
    df = _min_latency_below(df, MOE_KEYS + ["moe_ep_size", "num_tokens"])
    df = _one_source(df, MOE_KEYS + ["moe_ep_size", "num_tokens"])
    df = df[df["distribution"] == "balanced"]     # the tokens moesim's expert ops price
    grids, dups = _grids(df, "moe", MOE_KEYS, ["moe_ep_size", "num_tokens"], "latency", 1e-3,
                         path,
                         lambda k: (_dtype(k[0]),) + tuple(k[1:]))
    return Read("moe", grids, " + ".join(_rel(p) for p in paths), len(df), dups)


MIN_LATENCY = "moe_torch_flow_min_latency"
MIN_LATENCY_TOKENS = 128     # TensorRT-LLM's min-latency NVFP4 MoE: at most 128 tokens


def _min_latency_below(df, cols: list[str]):
    """TensorRT-LLM runs its gated NVFP4 MoE in min-latency mode up to 128 tokens (after
    attention-DP gathering), its CUTLASS kernels above; AIConfigurator prices it the same way
    (its SILICON mode reads the min-latency grid first for such queries). Where the file
    measured both, the min-latency kernel takes the points up to 128 tokens and no others."""
    if "kernel_source" not in df.columns or not (df["kernel_source"] == MIN_LATENCY).any():
        return df
    df = df[(df["kernel_source"] != MIN_LATENCY) | (df["num_tokens"] <= MIN_LATENCY_TOKENS)]
    fast = df["kernel_source"] == MIN_LATENCY
    claimed = df[fast].set_index(cols).index
    return df[fast | ~df.set_index(cols).index.isin(claimed)]


def _deepep_moe(base: Path, version: str, phase: str) -> Read | None:
    """SGLang's experts behind DeepEP (DeepGEMM's grouped GEMMs: contiguous after the normal
    dispatch in context, masked after the low-latency one in generation), by (EP, the group's
    tokens), routed uniformly at random; from the newest version not newer than `version`
    that measured them."""
    path = _newest(base / "moe" / "sglang", f"wideep_{phase}_moe_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, MOE_KEYS + ["moe_ep_size", "num_tokens", "latency"])
    df = df[df["distribution"] == "uniform"]      # moesim's routing: uniform at random
    grids, dups = _grids(df, f"moe_deepep_{phase}", MOE_KEYS, ["moe_ep_size", "num_tokens"],
                         "latency", 1e-3, path, lambda k: (_dtype(k[0]),) + tuple(k[1:]))
    return Read(f"moe_deepep_{phase}", grids, _rel(path), len(df), dups)


def _gqa(base: Path, fw: str, version: str, phase: str) -> Read | None:
    path = _newest(base / "attention" / fw, f"{phase}_attention_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    keys = ["attn_dtype", "kv_cache_dtype", "num_heads", "num_key_value_heads", "head_dim",
            "window_size"]
    _need(df, path, keys + ["batch_size", "isl", "step", "latency"])
    df = df.assign(kv_len=df["isl"] + df["step"])   # generation: the step's position
    df = _one_source(df, keys + ["batch_size", "isl", "kv_len"])
    length = "isl" if phase == "context" else "kv_len"
    grids, dups = _grids(df, f"gqa_{phase}", keys, ["batch_size", length], "latency", 1e-3,
                         path, lambda k: (_dtype(k[0]), _dtype(k[1])) + tuple(k[2:]))
    return Read(f"gqa_{phase}", grids, _rel(path), len(df), dups)


def _mla(base: Path, fw: str, version: str, phase: str) -> Read | None:
    path = _newest(base / "mla" / fw, f"{phase}_mla_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, ["kv_cache_dtype", "num_heads", "batch_size", "isl", "step", "latency"])
    df = df.assign(kv_len=df["isl"] + df["step"])
    length = "isl" if phase == "context" else "kv_len"
    # num_heads is the heads each GPU computes (tp_size only says how the run was split)
    grids, dups = _grids(df, f"mla_{phase}", ["kv_cache_dtype", "num_heads"],
                         ["batch_size", length], "latency", 1e-3, path,
                         lambda k: (_dtype(k[0]), k[1]))
    return Read(f"mla_{phase}", grids, _rel(path), len(df), dups)


def _mla_bmm(base: Path, fw: str, version: str) -> Read | None:
    path = _newest(base / "mla_bmm" / fw, "mla_bmm_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, ["op_name", "bmm_dtype", "num_heads", "num_tokens", "latency"])
    df = _one_source(df, ["op_name", "bmm_dtype", "num_heads", "num_tokens"])
    grids, dups = _grids(df, "mla_bmm", ["op_name", "bmm_dtype", "num_heads"], ["num_tokens"],
                         "latency", 1e-3, path, lambda k: (k[0], _dtype(k[1]), k[2]))
    return Read("mla_bmm", grids, _rel(path), len(df), dups)


def _dynamic_scale(base: Path, fw: str, version: str) -> Read | None:
    """TensorRT-LLM's per-tensor FP8 GEMMs were timed through its Linear module loaded without
    an input scale, so they quantise dynamically (an amax pass, then the scaled cast); its
    serving of a ModelOpt FP8 checkpoint quantises with the checkpoint's static scale. The
    computescale table measures the difference (dynamic minus static quantisation, M x K),
    which pricing takes off those GEMMs. The other engines' GEMM tables run static (vLLM) or
    per-token (SGLang) quantisation and get none."""
    if fw != "trtllm":
        return None
    path = _newest(base / "quantize" / fw, "computescale_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, ["quant_dtype", "m", "k", "latency"])
    grids, dups = _grids(df, "dynamic_scale", ["quant_dtype"], ["m", "k"], "latency", 1e-3,
                         path, lambda k: (_dtype(k[0]),))
    return Read("dynamic_scale", grids, _rel(path), len(df), dups)


def _quantize(base: Path, fw: str, version: str) -> Read | None:
    """FP8 activation quantisation before an FP8 GEMM (the scale_matrix table: an M x K
    activation quantised)."""
    path = _newest(base / "quantize" / fw, "scale_matrix_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, ["quant_dtype", "m", "k", "latency"])
    grids, dups = _grids(df, "quantize", ["quant_dtype"], ["m", "k"], "latency", 1e-3, path,
                         lambda k: (_dtype(k[0]),))
    return Read("quantize", grids, _rel(path), len(df), dups)


def _custom_all_reduce(base: Path, fw: str, version: str) -> Read | None:
    path = _newest(base / "comm" / fw, "custom_allreduce_perf.parquet", version)
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, ["num_gpus", "message_size", "latency"])
    if "backend" in df.columns:        # the CUDA-graph path the decode steps run
        graph = df[df["backend"].astype(str).str.contains("graph")]
        df = graph if len(graph) else df
    df = df.assign(nbytes=df["message_size"] * 2)
    grids, dups = _grids(df, "all_reduce", ["num_gpus"], ["nbytes"], "latency", 1e-3, path)
    return Read("all_reduce", grids, _rel(path), len(df), dups)


def _nccl(base: Path) -> Read | None:
    path = _newest(base / "comm" / "nccl", "nccl_perf.parquet")
    if path is None:
        return None
    df = _frame(path)
    _need(df, path, ["op_name", "nccl_dtype", "num_gpus", "message_size", "latency"])
    df = df[df["nccl_dtype"] == "half"]
    df = df.assign(nbytes=df["message_size"] * 2)
    grids, dups = _grids(df, "nccl", ["op_name", "num_gpus"], ["nbytes"], "latency", 1e-3, path)
    return Read("nccl", grids, _rel(path), len(df), dups)


A2A_DTYPES = {"dispatch": ("fp8", "bfloat16", "default"), "combine": ("bfloat16", "default")}


def _moe_a2a(base: Path, fw: str, version: str):
    """TensorRT-LLM's and vLLM's DeepEP all-to-all (moe_a2a_perf, the newest version not
    newer than the runtime's; its
    `latency` column is microseconds) as the same op classes as SGLang's: low-latency (`_ll`)
    and high-throughput (`_ht`, read as normal) dispatch and combine by (nodes, tokens per
    rank); dispatch in FP8 where measured (DeepEP's low-latency dispatch sends FP8), combine
    in BF16; the largest SM budget measured."""
    file = _newest(base / "comm" / fw, "moe_a2a_perf.parquet", version)
    if file is None:
        return
    df = _frame(file)
    _need(df, file, ["comm_backend", "phase", "comm_dtype", "node_num", "hidden_size", "topk",
                     "num_experts", "num_tokens", "sms", "latency"])
    df = df.rename(columns={"topk": "num_topk", "num_tokens": "num_token"})
    keys = ["hidden_size", "num_topk", "num_experts"]
    for kind, suffix in (("ll", "_ll"), ("normal", "_ht")):
        for part in ("dispatch", "combine"):
            sub = df[df["comm_backend"].str.endswith(suffix) & (df["phase"] == part)]
            dtype = next((d for d in A2A_DTYPES[part] if d in set(sub["comm_dtype"])), None)
            if dtype is None:
                continue
            sub = sub[sub["comm_dtype"] == dtype]
            sub = sub[sub["sms"] == sub["sms"].max()]
            grids, dups = _grids(sub, f"deepep_{kind}_{part}", keys, ["node_num", "num_token"],
                                 "latency", 1e-6, file)
            yield Read(f"deepep_{kind}_{part}", grids, _rel(file), len(sub), dups)


def _deepep(base: Path):
    """DeepEP low-latency and normal dispatch / combine by (nodes, tokens per rank), each node
    count from the newest version that measured it (the microsecond columns)."""
    import pandas as pd
    folder = base / "comm" / "sglang"
    if not folder.is_dir():
        return
    keys = ["hidden_size", "num_topk", "num_experts"]
    for kind, name in (("ll", "wideep_deepep_ll_perf.parquet"),
                       ("normal", "wideep_deepep_normal_perf.parquet")):
        paths = sorted((p / name for p in folder.iterdir() if (p / name).is_file()),
                       key=lambda p: version_key(p.parent.name), reverse=True)
        frames, files, taken = [], [], set()
        for path in paths:
            df = _frame(path)
            if "node_num" not in df.columns:
                df = df.assign(node_num=1)
            df = df[~df["node_num"].isin(taken)]
            if df.empty:
                continue
            taken |= set(int(v) for v in df["node_num"].unique())
            if kind == "ll":
                _need(df, path, keys + ["num_token", "dispatch_avg_t_us", "combine_avg_t_us"])
                df = df.assign(dispatch=df["dispatch_avg_t_us"], combine=df["combine_avg_t_us"])
            else:
                _need(df, path, keys + ["num_token", "dispatch_sms", "combine_sms",
                                        "dispatch_transmit_us", "dispatch_notify_us",
                                        "combine_transmit_us", "combine_notify_us"])
                sms = DEEPEP_SMS if DEEPEP_SMS in set(df["dispatch_sms"]) else \
                    int(df["dispatch_sms"].max())
                df = df[(df["dispatch_sms"] == sms) & (df["combine_sms"] == sms)]
                df = df.assign(dispatch=df["dispatch_transmit_us"] + df["dispatch_notify_us"],
                               combine=df["combine_transmit_us"] + df["combine_notify_us"])
            frames.append(df.assign(_file=_rel(path)))
            files.append(path)
        if not frames:
            continue
        df = pd.concat(frames, ignore_index=True)
        for part in ("dispatch", "combine"):
            grids, dups = _grids(df, f"deepep_{kind}_{part}", keys, ["node_num", "num_token"],
                                 part, 1e-6, files[0])
            yield Read(f"deepep_{kind}_{part}", grids, " + ".join(_rel(p) for p in files),
                       len(df), dups)
