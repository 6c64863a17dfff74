"""The package's layering, measured from its source: upward imports, import cycles, config lookups, long functions.

    python experiments/architecture_report.py [ROOT]      # ROOT: a checkout (default: this one)

Layers, bottom to top (docs/architecture.md): core (errors, files, runtime, config, run_folder, ...) -> data
(and data_prep, which builds on data) -> models -> distill -> engine -> train | eval -> pipeline, demo -> cli.
A module may import its own layer and those below, except: ``train`` and ``eval`` never import each other, and
``data`` never imports ``data_prep``. Every import counts, including those inside functions (they run too),
except under ``if TYPE_CHECKING:``. The top-level ``data_prep`` package of older trees counts as
``crossmodal.data_prep``.

The figures: upward imports (edges breaking the rule), import cycles (strongly connected groups of modules),
string-keyed config lookups outside ``crossmodal/config`` (``config["train"]``, ``data["path"]`` ... : a
subscript by a config key of an expression named like a config section), functions over 60 lines.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from dataclasses import dataclass, field

LAYERS = {"core": 0, "data": 1, "data_prep": 1, "models": 2, "distill": 3, "engine": 4, "train": 5, "eval": 5,
          "pipeline": 6, "demo": 6, "cli": 7, "__main__": 7}
FORBIDDEN_SIBLINGS = {("train", "eval"), ("eval", "train"), ("data", "data_prep")}
CONFIG_NAMES = {"config", "cfg", "data", "model", "section", "schedule", "optim", "train", "loss", "task", "teacher",
                "student", "distill", "saved"}
LONG_FUNCTION = 60


@dataclass
class Report:
    modules: dict[str, str] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    upward: list[tuple[str, str]] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    config_lookups: list[str] = field(default_factory=list)
    long_functions: list[tuple[str, int]] = field(default_factory=list)


def layer(module: str) -> str:
    """The layer of a module name (``crossmodal.train.run`` -> ``train``)."""
    parts = module.split(".")
    if parts[0] == "data_prep":
        return "data_prep"
    name = parts[1] if len(parts) > 1 else "core"
    return name if name in LAYERS else "core"


def find_modules(root: str) -> dict[str, str]:
    """Module name -> file, for ``crossmodal`` and (in older trees) a top-level ``data_prep`` package."""
    modules = {}
    for package in ("crossmodal", "data_prep"):
        if not os.path.isfile(os.path.join(root, package, "__init__.py")):
            continue
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                    modules[module.removesuffix(".__init__")] = path
    return modules


def _imported(module: str, path: str, node: ast.AST, modules: dict[str, str]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = []
    for name in names:  # the deepest module the name reaches: a.b.c imports a.b.c, or the package a.b
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append(name)
    return found


def _runtime_imports(tree: ast.AST):
    """Import nodes, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def analyse(root: str) -> Report:
    report = Report(modules=find_modules(root))
    for module, path in sorted(report.modules.items()):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        targets = set()
        for node in _runtime_imports(tree):
            targets.update(_imported(module, path, node, report.modules))
        report.edges[module] = targets
        for target in sorted(targets):
            if target.startswith(module + "."):
                continue  # a package's __init__ gathering its own modules (timm's registry pattern)
            a, b = layer(module), layer(target)
            if LAYERS[b] > LAYERS[a] or (a, b) in FORBIDDEN_SIBLINGS:
                report.upward.append((module, target))
        relative = os.path.relpath(path, root)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONG_FUNCTION:
                    report.long_functions.append((f"{relative}:{node.name}", length))
            if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                    and isinstance(node.slice.value, str) and not relative.startswith(
                        os.path.join("crossmodal", "config")) and _config_like(node.value)):
                report.config_lookups.append(f"{relative}:{node.lineno}")
    report.cycles = _cycles(report.edges)
    return report


def _config_like(node: ast.AST) -> bool:
    """``config[...]``, ``train_cfg[...]``, ``config["data"][...]``, ``data[...]``: an expression named like a
    config (section)."""
    if isinstance(node, ast.Subscript):
        return _config_like(node.value)
    if isinstance(node, ast.Attribute):
        node = ast.Name(node.attr)
    return isinstance(node, ast.Name) and (node.id in CONFIG_NAMES or node.id.endswith(("_cfg", "_config")))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), ignoring a package's imports of its own
    modules (their ``__init__`` runs first either way)."""
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--list", action="store_true", help="list every finding, not only the counts")
    args = parser.parse_args()
    report = analyse(args.root)
    print(f"{args.root}: {len(report.modules)} modules")
    print(f"upward imports: {len(report.upward)}")
    if args.list:
        print("".join(f"  {a} -> {b}\n" for a, b in report.upward), end="")
    print(f"import cycles: {len(report.cycles)} (modules in them: {sum(len(g) for g in report.cycles)})")
    if args.list:
        print("".join(f"  {' <-> '.join(group)}\n" for group in report.cycles), end="")
    print(f"string-keyed config lookups outside crossmodal/config: {len(report.config_lookups)}")
    if args.list:
        print("".join(f"  {where}\n" for where in report.config_lookups), end="")
    print(f"functions over {LONG_FUNCTION} lines: {len(report.long_functions)}")
    print("".join(f"  {name} ({length})\n" for name, length in sorted(report.long_functions)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
