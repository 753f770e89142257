"""The layers run one way: every project import (module level or inside a function) goes down the stack, never up, and never in a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("workbench", "detectors", "explain", "tools")

# The stack, lowest first (docs/architecture.md draws it). A module may import its own layer
# and the layers below; the longest matching prefix decides a module's layer.
LAYERS = [
    ("media", ["workbench", "workbench.video", "workbench.geometry", "workbench.faces", "workbench.tracking",
               "workbench.sandbox", "workbench.config", "workbench.demo"]),
    ("detectors", ["detectors"]),
    ("explain", ["explain"]),
    ("analysis", ["workbench.aggregate", "workbench.pipeline", "workbench.bias"]),
    ("store", ["workbench.store", "workbench.evidence", "workbench.cases", "workbench.service", "workbench.jobs",
               "workbench.worker", "workbench.batch"]),
    ("outputs", ["workbench.review", "workbench.report", "workbench.bias_report", "workbench.bundle",
                 "workbench.export"]),
    ("front ends", ["workbench.cli", "workbench.__main__", "workbench.ui", "workbench.api"]),
    ("tools", ["tools"]),
]
# A function-level import of a project module must say why, in a comment starting "lazy:".
LAZY_MARK = "# lazy:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, level = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return level


def project_imports(source: str, name: str) -> list[tuple[str, int, bool, str]]:
    """(imported project module, line, inside a function, source line) for every import in a module."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative import: resolve against this module's package
                    base = name.split(".")[: -child.level] if not name.endswith("__init__") else name.split(".")
                    targets = [".".join(base + ([child.module] if child.module else []))]
                elif child.module:
                    # `from pkg import mod` imports pkg.mod when it is a module of the project.
                    targets = [child.module] + [f"{child.module}.{a.name}" for a in child.names
                                                if _is_module(f"{child.module}.{a.name}")]
            for target in targets:
                if target.split(".")[0] in PACKAGES:
                    found.append((target, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, nested)

    visit(tree, False)
    return found


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def runtime_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def violations(modules: dict[str, str]) -> list[str]:
    """Every upward import, unexplained function-level import and import cycle among `modules` (name -> source)."""
    problems, graph = [], {}
    for name, source in modules.items():
        here = layer_of(name)
        graph[name] = set()
        for target, line, in_function, text in project_imports(source, name):
            there = layer_of(target)
            if there > here:
                problems.append(f"{name}:{line} imports {target} from a higher layer "
                                f"({LAYERS[here][0]} -> {LAYERS[there][0]})")
            if in_function and LAZY_MARK not in text and LAYERS[here][0] != "tools":
                problems.append(f"{name}:{line} imports {target} inside a function without a '{LAZY_MARK} why' comment")
            if target in modules and target != name:
                graph[name].add(target)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_every_import_runs_down_the_stack_without_cycles():
    modules = {name: path.read_text() for name, path in runtime_modules().items()}
    assert len(modules) >= 40
    assert violations(modules) == []


@pytest.mark.parametrize("planted, expected", [
    ({"workbench.video": "from workbench.store import Store\n", "workbench.store": ""}, "from a higher layer"),
    ({"detectors.base": "def f():\n    from explain.gradcam import explain\n", "explain.gradcam": ""},
     "from a higher layer"),
    ({"workbench.review": "def f():\n    from workbench.store import Store\n", "workbench.store": ""},
     "inside a function"),
    ({"workbench.store": "import workbench.evidence\n", "workbench.evidence": "import workbench.store\n"},
     "import cycle"),
])
def test_the_check_catches_a_planted_violation(planted, expected):
    found = violations(planted)
    assert any(expected in p for p in found), found


def test_a_commented_lazy_import_and_a_downward_import_pass():
    ok = {"workbench.review": "import workbench.store\ndef f():\n    import workbench.report  # lazy: heavy\n",
          "workbench.store": "", "workbench.report": ""}
    assert [p for p in violations(ok) if "higher layer" not in p] == []
