"""The house reads as the data flows: no import cycles, no module importing a layer drawn above it.

The layers, bottom to top, are the table in docs/architecture.md ("Layers")."""
import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    ("base", {"errors", "jsonout", "atomic", "notes"}),
    ("schema", {"schema"}),
    ("loading", {"loading", "hf_import"}),
    ("op graph", {"graph"}),
    ("engine", {"engine"}),
    ("measured kernels", {"kernels"}),
    ("pricing", {"pricing"}),
    ("step", {"step"}),
    ("serving and training", {"serving", "training", "router_bias"}),
    ("outputs", {"outputs"}),
    ("commands", {"commands"}),
]
LEVEL = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def unit(module: str) -> str:
    """simulator.schema.base -> schema; simulator.step.whatif -> whatif."""
    return module.split(".")[1]


def import_graph(root: Path = ROOT, typing_too: bool = False) -> nx.DiGraph:
    g = nx.DiGraph()
    for f in (root / "simulator").rglob("*.py"):
        mod = ".".join(f.relative_to(root).with_suffix("").parts)
        g.add_node(mod)
        tree = ast.parse(f.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only and not typing_too:   # annotations only: not run
                continue
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = root / Path(*name.split("."))
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


def test_the_serving_loop_and_its_parts_do_not_import_each_other_even_for_types():
    # run -> loop -> pools, result: the parts read the loop's state through serving/state.py's
    # protocols, not by importing loop.py (nor loop.py run.py) under TYPE_CHECKING
    g = import_graph(typing_too=True)
    serving = g.subgraph([m for m in g if m.startswith("simulator.serving.")])
    assert not list(nx.simple_cycles(serving))
    assert not any(b == "simulator.serving.loop" for _, b in g.in_edges("simulator.serving.loop")
                   if _.endswith((".pools", ".result")))


def upward(g: nx.DiGraph) -> list[tuple[str, str]]:
    return [(a, b) for a, b in g.edges
            if unit(b) in LEVEL and unit(a) in LEVEL and LEVEL[unit(b)] > LEVEL[unit(a)]]


def test_nothing_imports_upward():
    assert not upward(import_graph()), upward(import_graph())


def test_the_engine_imports_nothing_moe():
    core = set(import_graph().successors("simulator.engine.core"))
    assert core <= {"simulator.errors", "simulator.engine.streams"}, core


def test_the_walk_sees_a_planted_upward_import(tmp_path):
    # the checker itself: plant `engine.core -> serving.run` in a copy and it must be reported
    import shutil
    shutil.copytree(ROOT / "simulator", tmp_path / "simulator")
    core = tmp_path / "simulator" / "engine" / "core.py"
    core.write_text(core.read_text() + "\nfrom simulator.serving.run import ServingSim\n")
    assert upward(import_graph(tmp_path)) == [("simulator.engine.core", "simulator.serving.run")]
