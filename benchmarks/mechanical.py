"""Mutants derived mechanically from the code, beyond the named list of benchmarks/mutants.py:
operator swaps (+ -, * /, < <=, > >=), a dropped term of a sum, constants changed (0 -> 1,
n -> 2n), min and max swapped, and the two arguments of a call swapped. Each is a one-line
text change (the line must occur once in its module), so the runner plants it like a named one.

Used by `python benchmarks/mutation.py --mechanical N` (N per module, drawn with a fixed seed).
"""
from __future__ import annotations

import ast
import random
from pathlib import Path

from mutants import Mutant

# The modules whose numbers users read: pricing, memory, cost, serving capacity, training.
MODULES = ("simulator/pricing/hardware.py", "simulator/pricing/measured.py",
           "simulator/graph/memory.py", "simulator/pricing/cost.py",
           "simulator/serving/run.py", "simulator/training/run.py",
           "simulator/serving/engine_policy.py", "simulator/training/data_parallel.py")
SEED = 20261206
SWAP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*")}
CMP = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">"}
SYMMETRIC = {"min", "max"}          # swapping their arguments changes nothing: not a mutant
# mechanical mutants judged unable to change any result: (module, mutated line) -> why
EQUIVALENT = {
    ("simulator/training/data_parallel.py",
     "return sum(math.ceil(p / size) for p in (dense, experts) if p > 1) or 1"):
        "a device's dense or expert parameter count is 0 or millions: never in (0, 1]",
    ("simulator/serving/engine_policy.py",
     "if not self.padding or not sizes or seqs >= sizes[-1]:"):
        "at seqs equal to the largest captured size both branches return that size",
    ("simulator/pricing/hardware.py", "if op.aux_bytes > 1:"):
        "aux_bytes counts the bytes of whole unfused passes over tensors: never in (0, 1]",
    ("simulator/pricing/hardware.py",
     "latency = prof.nic.latency_s.value if remote > 1 else prof.nvlink.latency_s.value"):
        "remote counts bytes leaving the node: never in (0, 1]",
    ("simulator/pricing/measured.py",
     'pick = [r for r in pick if r.framework == "sglang"][-1:] or refs[:2]'):
        "the first of the references is used either way (ref = pick[0])",
    ("simulator/graph/memory.py", "n = model.moe.num_experts if model.moe else 1"):
        "a dense model has no MoE layers: its expert slots times zero MoE layers is 0 either way",
    ("simulator/graph/memory.py", "(model.moe.top_k * h) if model.moe else 1)"):
        "the widest buffer is at least the hidden size, never under 1",
    ("simulator/training/run.py", "/ total if total > 0 else 1.0"):
        "a micro-batch's forward and backward always take time: total is never 0",
}


def _one_line(node: ast.AST) -> bool:
    return getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno


def _replace(lines: list[str], node: ast.AST, new: str) -> tuple[str, str]:
    """(old line, new line): the node's text on its line replaced by `new`."""
    line = lines[node.lineno - 1]
    return line, line[:node.col_offset] + new + line[node.end_col_offset:]


def candidates(module: str, root: Path) -> list[Mutant]:
    """Every mechanical mutant of `module` whose line is unique in it."""
    text = (root / module).read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    seg = lambda n: ast.get_source_segment(text, n)     # noqa: E731
    out: list[tuple[str, str, str]] = []
    for node in ast.walk(tree):
        if not _one_line(node):
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in SWAP:
            a, b = seg(node.left), seg(node.right)
            old_op, new_op = SWAP[type(node.op)]
            out.append((f"{old_op} -> {new_op}", *_replace(lines, node,
                                                           f"({a}) {new_op} ({b})")))
            if isinstance(node.op, (ast.Add, ast.Sub)):
                out.append((f"term dropped: {b}", *_replace(lines, node, f"({a})")))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in CMP:
            out.append((f"comparison {CMP[type(node.ops[0])]}",
                        *_replace(lines, node, f"{seg(node.left)} {CMP[type(node.ops[0])]} "
                                               f"{seg(node.comparators[0])}")))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and \
                not isinstance(node.value, bool):
            v = node.value
            new = "1" if v == 0 else repr(v * 2)
            out.append((f"constant {v!r} -> {new}", *_replace(lines, node, new)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("min", "max"):
                other = "max" if node.func.id == "min" else "min"
                out.append((f"{node.func.id} -> {other}",
                            *_replace(lines, node.func, other)))
            if len(node.args) == 2 and not node.keywords and node.func.id not in SYMMETRIC and \
                    not any(isinstance(a, ast.Starred) for a in node.args):
                a, b = seg(node.args[0]), seg(node.args[1])
                if a != b:
                    out.append((f"arguments of {node.func.id} swapped",
                                *_replace(lines, node, f"{node.func.id}({b}, {a})")))
    mutants = []
    for what, old, new in out:
        if old != new and text.count(old) == 1 and not old.lstrip().startswith(("#", '"')):
            mutants.append(Mutant(module, f"line {lines.index(old) + 1}: {what}", old, new))
    return mutants


def draw(per_module: int, root: Path, seed: int | None = None) -> list[Mutant]:
    """Up to `per_module` mechanical mutants of each module, the same draw for the same seed
    (default SEED)."""
    rng = random.Random(SEED if seed is None else seed)
    picked = []
    for m in MODULES:
        c = candidates(m, root)
        rng.shuffle(c)
        picked += c[:per_module]
    return picked
