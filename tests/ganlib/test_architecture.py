"""The package layout is the architecture: no import circle, and each package only reaches down.

Imports are read from the source (module level and inside functions; ``if TYPE_CHECKING:`` blocks are
left out, as they never run). A new import that breaks a rule fails here with the edge named.
"""

from __future__ import annotations

import ast
from pathlib import Path

GANLIB = Path(__file__).resolve().parents[2] / "ganlib"

# Each group may import from itself and from the groups listed (the layers below it).
ALLOWED = {
    "errors": set(),
    "config": {"errors"},
    "runs": {"errors", "config"},
    "models": {"errors", "config"},
    "sampling": {"errors", "config", "runs", "models"},
    "data": {"errors", "config", "runs"},
    "rendering": {"errors", "config", "runs", "models", "sampling", "data"},
    # evaluation sits above training: its self-supervised encoder trains on the augmentations D sees
    # (training.augment); training never imports evaluation.
    "evaluation": {"errors", "config", "runs", "models", "sampling", "data", "rendering", "training"},
    "training": {"errors", "config", "runs", "models", "sampling", "data"},
    "preflight": {"errors", "config", "runs", "models", "data", "evaluation"},
    "sweep": {"errors", "config", "runs"},
    "export": {"errors", "config", "runs", "models", "sampling", "rendering"},
    # tracking exports the best generator; it is the only module that imports mlflow (lazily)
    "tracking": {"errors", "config", "runs", "sampling", "rendering", "export"},
    "__init__": set(),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(GANLIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """The ganlib modules ``path`` imports (skipping ``if TYPE_CHECKING:`` blocks)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ganlib"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ganlib"):
            if node.module != "ganlib":  # `from ganlib import errors` imports ganlib.errors, not the API
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from ganlib.runs import checkpoint`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in GANLIB.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_ganlib_has_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for module, imported in _graph().items():
        group = _group(module)
        if group == "__init__":
            continue  # the package's public API may name anything (it loads lazily)
        assert group in ALLOWED, f"{module}: a new package; add it to ALLOWED in this test"
        wrong += [f"{module} -> {m}" for m in sorted(imported)
                  if _group(m) != group and _group(m) not in ALLOWED[group]]
    assert not wrong, "imports that reach upward: " + "; ".join(wrong)


def test_ganlib_never_imports_prefect():
    offenders = [str(p.relative_to(GANLIB.parent)) for p in GANLIB.rglob("*.py")
                 if any(isinstance(n, (ast.Import, ast.ImportFrom))
                        and any((a.name if isinstance(n, ast.Import) else (n.module or "")).startswith("prefect")
                                for a in n.names)
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert offenders == []


def test_the_public_api_is_importable_from_the_package():
    import ganlib

    for name in ("build_config", "prepare_dataset", "train", "evaluate_run", "load_generator", "generate"):
        assert callable(getattr(ganlib, name)), name
