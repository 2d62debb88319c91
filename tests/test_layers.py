"""The house reads as the data flows: no import cycles, no module importing a layer drawn above it.

The layers, bottom to top, are the table in docs/architecture.md ("Layers")."""
import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    ("base", {"errors", "jsonout", "atomic", "streams", "cost"}),
    ("schema", {"schema"}),
    ("loading", {"loading", "hf_import"}),
    ("op graph", {"model", "params", "memory", "unfused"}),
    ("pricing", {"hardware", "calibration", "routing", "topology", "traffic"}),
    ("engine", {"engine", "schedule", "timeline"}),
    ("step", {"whatif"}),
    ("serving and training", {"arrivals", "step_model", "serving", "serve_sweep", "pipeline",
                              "training", "router_bias"}),
    ("outputs", {"report", "trace", "sweep", "golden"}),
]
LEVEL = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def unit(module: str) -> str:
    """simulator.schema.base -> schema; simulator.whatif -> whatif."""
    return module.split(".")[1]


def import_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for f in (ROOT / "simulator").rglob("*.py"):
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        g.add_node(mod)
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = ROOT / Path(*name.split("."))
                if name.startswith("simulator.") and (target.with_suffix(".py").exists() or
                                                      (target / "__init__.py").exists()):
                    g.add_edge(mod, name.removesuffix(".__init__"))
    return g


def test_every_module_has_a_layer():
    units = {unit(m) for m in import_graph() if m.count(".") >= 1}
    units.discard("__init__")
    assert units <= set(LEVEL), sorted(units - set(LEVEL))


def test_no_import_cycles():
    g = import_graph()
    # a package's __init__ re-exporting its own modules is not a cycle between layers
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if b.startswith(a + ".")
                         or a.startswith(b + ".") and b.count(".") == 1])
    cycles = list(nx.simple_cycles(g))
    assert not cycles, cycles[:3]


def test_nothing_imports_upward():
    upward = [(a, b) for a, b in import_graph().edges
              if unit(b) in LEVEL and unit(a) in LEVEL and LEVEL[unit(b)] > LEVEL[unit(a)]]
    assert not upward, upward


def test_the_engine_imports_nothing_moe():
    g = import_graph()
    assert {unit(b) for b in g.successors("simulator.engine")} <= {"errors", "streams"}


def test_the_walk_sees_a_planted_upward_import(tmp_path, monkeypatch):
    # the checker itself: an engine module importing serving must be reported
    assert LEVEL["serving"] > LEVEL["engine"]
    edges = [("simulator.engine", "simulator.serving")]
    upward = [(a, b) for a, b in edges if LEVEL[unit(b)] > LEVEL[unit(a)]]
    assert upward == edges
