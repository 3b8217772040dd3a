"""The package's layout rules: no import cycle among ``omnifm_jax`` modules, none at all (not
even through imports inside functions) among ``omnifm_jax.data`` modules, and every data set
registered in the module that defines its loader."""
from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set

import omnifm_jax
from omnifm_jax.registry import DATASETS

ROOT = Path(omnifm_jax.__file__).resolve().parent


def _module_names() -> Dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("omnifm_jax",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(tree: ast.Module, name: str, is_package: bool, modules: Set[str]) -> Dict[str, Set[str]]:
    """``{"module": targets imported outside any function, "function": targets imported inside one}``:
    the package modules named by ``import omnifm_jax...``, ``from omnifm_jax... import ...`` and
    relative imports (``from .x import y`` names ``x.y`` when that is a module, else ``x``)."""
    out: Dict[str, Set[str]] = {"module": set(), "function": set()}
    base = name.split(".") if is_package else name.split(".")[:-1]

    def targets(node: ast.AST) -> List[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.split(".")[0] == "omnifm_jax"]
        if not isinstance(node, ast.ImportFrom):
            return []
        if node.level:
            pkg = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] == "omnifm_jax":
            pkg = node.module
        else:
            return []
        return [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg for a in node.names]

    def visit(node: ast.AST, level: str) -> None:
        for t in targets(node):
            if t in modules and t != name:
                out[level].add(t)
        inner = "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else level
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, "module")
    return out


def import_graphs() -> Dict[str, Dict[str, Set[str]]]:
    """``{"module": graph of module-level imports, "all": module- and function-level}``, each
    ``{module: set of imported package modules}`` over every module of ``omnifm_jax``."""
    modules = _module_names()
    graphs: Dict[str, Dict[str, Set[str]]] = {"module": {}, "all": {}}
    for name, path in modules.items():
        found = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", set(modules))
        graphs["module"][name] = found["module"]
        graphs["all"][name] = found["module"] | found["function"]
    return graphs


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state: Dict[str, int] = {}  # 1 on the stack, 2 done
    stack: List[str] = []

    def dfs(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_graph_builder_sees_relative_and_absolute_imports():
    graphs = import_graphs()
    assert "omnifm_jax.data.federation" in graphs["module"]["omnifm_jax.data"]  # from .federation import ...
    assert "omnifm_jax.registry" in graphs["module"]["omnifm_jax.data.registry"]  # from omnifm_jax.registry import
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycle_in_the_package():
    assert find_cycle(import_graphs()["module"]) is None


def test_no_import_cycle_in_data_even_inside_functions():
    graph = import_graphs()["all"]
    data = {m: {t for t in ts if t.startswith("omnifm_jax.data.")} for m, ts in graph.items()
            if m.startswith("omnifm_jax.data.")}
    assert find_cycle(data) is None


def test_every_data_set_registers_in_the_module_that_defines_its_loader():
    names = DATASETS.available()
    assert names
    for name in names:
        registered = DATASETS.get(name)
        module = sys.modules[registered.__module__]
        assert module.__name__.startswith("omnifm_jax.data.") and module.__name__ != "omnifm_jax.data.registry", name
        assert f'DATASETS.register("{name}"' in inspect.getsource(module), name
        # The loader the registered function calls (a public function) is defined in that module too.
        loaders = [getattr(module, n) for n in registered.__code__.co_names
                   if not n.startswith("_") and inspect.isfunction(getattr(module, n, None))
                   and getattr(module, n).__module__ == module.__name__]
        assert loaders, f"{name}: {module.__name__} registers it but defines none of the functions it calls"


def test_public_modules_declare_all_and_it_names_what_exists():
    """Every public module (not ``_private``, not a named config) declares ``__all__``, and every
    name in it exists; a module that forgets a name would hide it from ``from x import *`` and
    from the API docs."""
    import importlib

    missing, wrong = [], []
    for name, path in _module_names().items():
        if any(p.startswith("_") for p in name.split(".")[1:]) or ".configs" in name or name.endswith("tfds_builders"):
            continue
        if "__all__" not in path.read_text():
            missing.append(name)
            continue
        module = importlib.import_module(name)
        wrong += [f"{name}.{n}" for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"modules without __all__: {missing}"
    assert not wrong, f"__all__ names that do not exist: {wrong}"


#: Modules still over the limit, each with the split it is waiting for. The test fails when one
#: of them is split (remove it here) as well as when any other module grows past the limit.
KNOWN_LONG: Dict[str, str] = {}


def test_no_library_module_over_700_lines():
    """Long modules mix concerns; the limit (and ~400 for data/ without a stated reason) is the
    house rule of CONTRIBUTING.md."""
    lengths = {name: len(path.read_text().splitlines()) for name, path in _module_names().items()}
    long = {name: n for name, n in lengths.items() if n > 700 and name not in KNOWN_LONG}
    assert not long, f"split these modules by concern: {long}"
    fixed = [name for name in KNOWN_LONG if lengths.get(name, 0) <= 700]
    assert not fixed, f"{fixed} are no longer over 700 lines: remove them from KNOWN_LONG"
