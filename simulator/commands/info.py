"""The reading commands: `model` (parameter counts, HF import), `profiles`, `profile show`,
`runtimes`, `schema`, and the `router-bias` controller simulation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.table import Table

from simulator.commands import common as c
from simulator.errors import MoesimError
from simulator.outputs import tables as T

SCHEMAS = ("workload", "model", "profile")


def model(name: str, config: Optional[Path], out_path: Optional[Path], force: bool) -> None:
    """`moesim model NAME`: parameter counts. `moesim model import CONFIG.json`: HF -> YAML."""
    if name == "import":
        import_model(config, out_path, force)
        return
    from simulator.graph.params import count_params
    from simulator.loading import load_model
    spec = load_model(name)
    n = count_params(spec)
    table = Table(title=f"{spec.name} ({spec.family}, {spec.num_layers} layers, "
                  f"{spec.layer_kind})")
    table.add_column("quantity")
    table.add_column("parameters", justify="right")
    table.add_row("total (excl. MTP)", f"{n.total / 1e9:.2f}B")
    table.add_row("activated per token", f"{n.activated / 1e9:.2f}B")
    if spec.moe and spec.moe.num_zero_experts:
        for k in (0, spec.moe.mean_real_experts, spec.moe.top_k):
            table.add_row(f"activated at {k:g} real experts",
                          f"{count_params(spec, k).activated / 1e9:.2f}B")
    table.add_row("routed experts (all layers)", f"{n.expert_total / 1e9:.2f}B")
    table.add_row("embedding + LM head", f"{n.embedding / 1e9:.2f}B")
    if n.mtp:
        table.add_row("MTP layers (extra)", f"{n.mtp / 1e9:.2f}B")
    c.stdout.print(table)


def import_model(config: Optional[Path], out_path: Optional[Path], force: bool) -> None:
    """A Hugging Face config.json as a moesim model YAML, printed or written atomically."""
    from simulator.hf_import import import_hf_config, spec_to_yaml
    if config is None:
        raise MoesimError("CONFIG", "no config.json given",
                          "run `moesim model import path/to/config.json`")
    if out_path is not None:
        c.check_outputs(out=out_path)
    text = spec_to_yaml(import_hf_config(config))
    if out_path is None:
        print(text, end="")
        return
    if out_path.exists() and not force:
        raise MoesimError("--out", f"{out_path} exists", "pass --force or another path")
    from simulator.atomic import write_text_atomic
    write_text_atomic(out_path, text, "--out")
    c.stdout.print(f"wrote {out_path}")


def profiles() -> None:
    """The shipped hardware profiles, one row each (read, not validated)."""
    from simulator.loading import PROFILES_DIR, known_names, read_yaml_mapping
    table = Table(title="hardware profiles (hardware_profiles/)")
    for col in ("name", "gpu", "BF16 TFLOP/s", "HBM GB", "HBM TB/s", "scale-up GB/s",
                "NIC GB/s", "$/GPU-h"):
        table.add_column(col, justify="left" if col in ("name", "gpu") else "right")
    for name in known_names(PROFILES_DIR):
        d = read_yaml_mapping(PROFILES_DIR / f"{name}.yaml")
        cells = [T.sourced_cell(d, keys, scale, fmt) for keys, scale, fmt in (
            (("peak_bf16_flops",), 1e12, None), (("hbm_bytes",), 1e9, ".0f"),
            (("hbm_bandwidth_Bps",), 1e12, ".2f"), (("nvlink", "bandwidth_Bps"), 1e9, ".0f"),
            (("nic", "bandwidth_Bps"), 1e9, ".0f"), (("price_per_gpu_hour",), 1.0, ".2f"))]
        table.add_row(name, str(d.get("gpu", "?")), *cells)
    c.stdout.print(table)


def profile_show(name: str) -> None:
    """One profile validated: peaks, effective values and the source of every number."""
    from simulator.loading import load_profile
    p = load_profile(name)
    table = Table(title=f"{p.name}: {p.gpu}")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("source", overflow="fold")
    for key, value, source in T.profile_rows(p.model_dump()):
        table.add_row(key, value, source)
    c.stdout.print(table)


def runtimes() -> None:
    """The serving engine presets and the training framework presets, with sources."""
    c.stdout.print(T.serving_runtimes_table())
    c.stdout.print(T.runtimes_table())


def schema(kind: str) -> None:
    """The JSON Schema of a YAML file kind (workload, model or profile) on stdout."""
    from simulator.schema import HardwareProfile, ModelSpec, Workload
    classes = {"workload": Workload, "model": ModelSpec, "profile": HardwareProfile}
    if kind not in classes:
        raise MoesimError("KIND", f"unknown schema {kind!r}",
                          f"use one of {', '.join(SCHEMAS)}, e.g. `moesim schema workload`")
    print(json.dumps(classes[kind].model_json_schema(), indent=2))


def router_bias(steps: int, tokens: int, target: float, top_k: int, ffn_experts: int,
                zero_experts: int, mu: float, ki: float, kd: float, skew: float, window: int,
                seed: int, plot: Optional[Path], as_json: bool) -> None:
    """LongCat-Flash's router-bias controller simulated over synthetic logits."""
    from rich.progress import Progress
    from simulator.atomic import write_text_atomic
    from simulator.router_bias import BiasConfig, bias_figure, simulate_bias
    cfg = BiasConfig(n_ffn=ffn_experts, n_zero=zero_experts, top_k=top_k, target_real=target,
                     tokens_per_step=tokens, steps=steps, mu=mu, ki=ki, kd=kd, skew=skew,
                     window=window, seed=seed)
    cfg.check()
    c.check_outputs(plot=plot)
    with Progress(console=c.err, transient=True) as bar:
        task = bar.add_task("routing steps", total=steps)
        trace = simulate_bias(cfg, progress=lambda _s: bar.advance(task))
    if plot is not None:
        write_text_atomic(plot, bias_figure(trace, cfg).to_html(include_plotlyjs=True), "--plot")
    settled = trace.first_step_settled(target)
    if as_json:
        c.print_json({"settled_step": settled, "mean_real": trace.mean_real.tolist(),
                      "std_real": trace.std_real.tolist(),
                      "load_max_over_mean": trace.load_max_over_mean.tolist()})
        return
    table = Table(title=f"router bias: target {target} real experts of top-{top_k}")
    for col in ("step", "mean real", "std real", "max/mean load"):
        table.add_column(col, justify="right")
    marks = sorted({0, *range(steps // 10 - 1, steps, max(1, steps // 10)), steps - 1})
    for i in marks:
        table.add_row(str(i + 1), f"{trace.mean_real[i]:.2f}", f"{trace.std_real[i]:.2f}",
                      f"{trace.load_max_over_mean[i]:.2f}")
    c.stdout.print(table)
    when = f"step {settled + 1}" if settled is not None else f"not within {steps} steps"
    c.stdout.print(f"settled (mean within 0.2 of target and max/mean load < 1.3 from then on): "
                   f"{when}")
    if plot is not None:
        c.stdout.print(f"figure written to {plot}")
    else:
        c.stdout.print("pass --plot router-bias.html for the interactive figure", highlight=False)
