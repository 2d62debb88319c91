"""What every command shares: the consoles, the user-error wrapper, checks of CLI values, the
workload with its command-line overrides, strict JSON on stdout."""
from __future__ import annotations

import math
from functools import wraps
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from simulator.errors import MoesimError
from simulator.outputs import tables as T

stdout = Console(width=max(Console().width, 150))
err = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Print MoesimError as one paragraph and exit 2, never a traceback; Ctrl-C exits 130."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoesimError as exc:
            err.print(f"[bold red]error[/]: {escape(T.printable(exc.render()))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            err.print("interrupted: stopped on Ctrl-C; nothing half-written was kept",
                      highlight=False)
            raise typer.Exit(130) from None
        except MemoryError:
            err.print("[bold red]error[/]: the run needs more memory than this machine has. Fix: "
                      "shrink the workload (batch, context, duration or ranks)", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


def check_number(value: Optional[float], option: str, *, low: float = 0.0,
                 allow_low: bool = False, high: float = float("inf")) -> None:
    """Refuse a CLI number that is NaN, infinite, or outside (low, high]."""
    if value is None:
        return
    if not math.isfinite(value) or value < low or (value == low and not allow_low) \
            or value > high:
        bound = f">= {low:g}" if allow_low else f"> {low:g}"
        top = f" and <= {high:g}" if math.isfinite(high) else ""
        raise MoesimError(option, f"{value} is not a finite number {bound}{top}",
                          f"pass {option} with a number {bound}{top}")


def check_outputs(**paths: Optional[Path]) -> None:
    """Check every output path before any work is done (a directory, under a file, unwritable)."""
    from simulator.atomic import check_output_path
    for option, path in paths.items():
        if path is not None:
            check_output_path(path, "--" + option.replace("_", "-"))


def int_list(text: str, option: str) -> list[int]:
    """A comma-separated list of positive integers, or a clear error."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MoesimError(option, f"{text!r} is not a list of whole numbers",
                          f"e.g. {option} 8,32,128") from None
    if not out or any(x <= 0 for x in out):
        raise MoesimError(option, f"{text!r} needs positive whole numbers",
                          f"e.g. {option} 8,32,128")
    return out


def names(text: str, option: str, example: str = "h200-sxm") -> list[str]:
    """A comma-separated list of names, or a clear error."""
    out = [x.strip() for x in text.split(",") if x.strip()]
    if not out:
        raise MoesimError(option, "no name given", f"e.g. {option} {example}")
    return out


def load_workload(path: str, hardware: Optional[str] = None, gpus: Optional[int] = None,
                  batch: Optional[int] = None):
    """The workload YAML (schemas imported only when a command needs them: a fast --help), with
    the command line's overrides applied and named in its title."""
    from simulator.loading import load_workload as load
    return override(load(path), hardware=hardware, gpus=gpus, batch=batch)


def override(w, hardware: Optional[str] = None, gpus: Optional[int] = None,
             batch: Optional[int] = None):
    """`w` with --hardware, --gpus (the plan's GPU count, every degree kept) and --batch
    (sequences per device) applied; its name says what was changed."""
    changes, update = [], {}
    if hardware is not None:
        update["hardware"] = hardware
        changes.append(f"on {hardware}")
    if gpus is not None:
        if gpus <= 0:
            raise MoesimError("--gpus", f"{gpus} is not a positive GPU count", "pass --gpus 8")
        update["plan"] = w.plan.variant(gpus=gpus)
        changes.append(f"{gpus} GPUs")
    if batch is not None:
        if batch <= 0:
            raise MoesimError("--batch", f"{batch} is not a positive batch", "pass --batch 8")
        update["batch_per_device"] = batch
        changes.append(f"batch {batch}")
    if not changes:
        return w
    return w.variant(**update, name=f"{w.name} ({', '.join(changes)})")


def print_json(obj) -> None:
    """Print strict JSON (RFC 8259: no NaN or Infinity; undefined numbers are null)."""
    from simulator.jsonout import dumps
    print(dumps(obj))


def print_warnings(caught: list) -> None:
    """Show captured user warnings, one line each, on stderr."""
    for c in caught:
        if issubclass(c.category, UserWarning):
            err.print(f"[yellow]warning[/]: {escape(str(c.message))}", highlight=False)
