"""The package reads in pipeline order: data -> models -> distill -> train -> eval -> tune.

No module imports (at the top or inside a function) from a folder later in that order than its
own; the root's base modules import no folder at all; and no module outgrows about 500 lines.
The root's entry points (cli, serve, pipeline, demo, jobkit and the public re-exports) may import
anything: they stand above the pipeline.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "raydistill"
ORDER = ("data", "models", "distill", "train", "eval", "tune")
BASE = ("errors", "atomic", "lazy", "config", "hub", "runtime", "metrics", "textbrewer_training",
        "stage_plan", "console")
ENTRY = ("__init__", "cli", "serve", "pipeline", "stages", "demo", "jobkit", "losses", "schedulers",
         "report", "export")


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raydistill"):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("raydistill")]
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
              and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)):
            # a package's lazy exports (raydistill.lazy): each value is a module it imports
            out += [(v.lineno, v.value) for v in node.value.values
                    if isinstance(v, ast.Constant) and str(v.value).startswith("raydistill")]
    return out


def rank(module: str) -> int:
    """-1 for a base module, the folder's place in ORDER, len(ORDER) for an entry point."""
    parts = module.split(".")
    if len(parts) < 2:
        return len(ORDER)
    if parts[1] in ORDER:
        return ORDER.index(parts[1])
    return -1 if parts[1] in BASE else len(ORDER)


def test_every_root_module_is_a_base_module_or_an_entry_point():
    names = {p.stem for p in PACKAGE.glob("*.py")}
    assert names == set(BASE) | set(ENTRY), names ^ (set(BASE) | set(ENTRY))
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ORDER)


def test_no_module_imports_a_later_stage():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1 and rel.stem in ENTRY:
            continue
        mine = ORDER.index(rel.parts[0]) if len(rel.parts) > 1 else -1
        for line, module in imports(path):
            theirs = rank(module)
            # a base module imports base modules only; a stage imports base modules, earlier
            # stages and its own
            if theirs > mine or (mine == -1 and theirs != -1):
                bad.append(f"raydistill/{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_module_outgrows_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


# A base module's constructor-time check may plan with a module that imports it back, lazily:
# DistillConfig.__post_init__ validates a staged config with stage_plan, which builds
# DistillConfigs. The only circle allowed; any other is a layering bug.
ALLOWED_CIRCLES = ({"raydistill.config", "raydistill.stage_plan"},)


def test_no_import_circle():
    """No module imports (at the top or inside a function) one that imports it back, directly
    or through others (e.g. cli -> serve -> cli: serve now takes the CLI's main as an argument)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("raydistill", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = {m for _line, m in imports(path)}
    for path in PACKAGE.rglob("*.py"):  # `from raydistill import serve` imports raydistill.serve
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "raydistill":
                parts = ("raydistill", *path.relative_to(PACKAGE).with_suffix("").parts)
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                graph[name] |= {f"raydistill.{a.name}" for a in node.names
                                if f"raydistill.{a.name}" in graph}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += [m for m in graph.get(node, ()) if m in graph and m != "raydistill"]
        return False

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph.get(a, ())
                     if b in graph and b != "raydistill" and a < b and reaches(b, a)
                     and {a, b} not in ALLOWED_CIRCLES)
    assert not circles, "import circles:\n" + "\n".join(circles)
