"""The package layout holds: no import circle, dependencies run one way, no function over 80 lines.

Every module under src/focalnet is read with `ast` (nothing is imported), and every import counts: at
module level and inside functions, relative and absolute. The layers, bottom to top (docs/architecture.md):

    0 base          errors, utils, images, datasets        (helpers every layer shares)
    1 core          layers, models, registry
    2 checkpoints   checkpoints.*
    3 factory       factory, and the package's __init__    (create_model, load_model)
    4 applications  train.*, inspect.*, deploy.*, dense.*
    5 cli           cli.*

A module imports only from its own layer or below. The applications (layer 4) do not import each other at
all, neither a package's internals (`focalnet.inspect.pictures`) nor its public __init__ (`focalnet.inspect`):
a helper two of them need moves down a layer, and what observes a run (its report) lives with inspect. An
exception is written, with its reason, in APPLICATION_EXCEPTIONS, and docs/architecture.md names it.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Iterable, Iterator, Optional

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "focalnet"
MAX_FUNCTION_LINES = 80

# a module's layer is that of the longest entry naming it or a package above it ("focalnet" itself: exactly)
LAYERS = {
    "focalnet.errors": 0,
    "focalnet.utils": 0,
    "focalnet.safeio": 0,
    "focalnet.images": 0,
    "focalnet.datasets": 0,
    "focalnet.preprocess": 0,
    "focalnet.flops": 0,
    "focalnet.precision": 0,
    "focalnet.allocator": 0,
    "focalnet.layers": 1,
    "focalnet.models": 1,
    "focalnet.registry": 1,
    "focalnet.arch_fields": 1,
    "focalnet.checkpoints": 2,
    "focalnet": 3,
    "focalnet.factory": 3,
    "focalnet.hub": 3,
    "focalnet.train": 4,
    "focalnet.inspect": 4,
    "focalnet.deploy": 4,
    "focalnet.dense": 4,
    "focalnet.cli": 5,
}
LAYER_NAMES = {0: "base", 1: "core", 2: "checkpoints", 3: "factory", 4: "applications", 5: "cli"}
APPLICATIONS = 4
# (importing package, imported package) -> why this one import between applications is right; none today
APPLICATION_EXCEPTIONS: dict[tuple[str, str], str] = {}


@functools.lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every module under src/focalnet by its dotted name; a package by its own name (its __init__.py)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


@functools.lru_cache(maxsize=None)
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(), str(path))


def _resolve(name: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (`from ..x import y` in focalnet.a.b -> focalnet.x)."""
    if not node.level:
        return node.module or ""
    package = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, node: ast.AST) -> list[str]:
    """The modules one import statement in module `name` imports ([] for any other statement)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(name, node)
        # `from .pkg import sub` imports the submodule sub (`from .. import inspect`: the package
        # focalnet.inspect, its __init__); `from .mod import name` the module
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
    return []


def imports(name: str) -> set[str]:
    """The focalnet modules `name` imports, anywhere in it (module level, functions, TYPE_CHECKING blocks)."""
    out: set[str] = set()
    for node in ast.walk(tree(name)):
        out.update(t for t in _targets(name, node) if t == ROOT or t.startswith(ROOT + "."))
    out.discard(name)
    return out


def layer(name: str) -> Optional[int]:
    probe = name
    while probe != ROOT:
        if probe in LAYERS:
            return LAYERS[probe]
        probe = probe.rpartition(".")[0]
    return LAYERS[ROOT] if name == ROOT else None


def application(name: str) -> Optional[str]:
    """The layer-4 package a module belongs to (`focalnet.inspect` for focalnet.inspect.pictures), if any."""
    top = ".".join(name.split(".")[:2])
    return top if layer(name) == APPLICATIONS else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node, or with a self-edge (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph() -> dict[str, set[str]]:
    # an import of a module that does not exist is test_imports_name_modules_that_exist's to report
    return {name: {t for t in imports(name) if t in modules()} for name in modules()}


def _lines(items: Iterable[str]) -> str:
    return "\n  " + "\n  ".join(items)


def test_the_reader_sees_imports_at_every_level():
    # the import reader itself: relative and absolute, at module level and inside functions
    assert "focalnet.checkpoints.convert" in imports("focalnet.checkpoints.io")  # from .convert import ...
    assert "focalnet.errors" in imports("focalnet.checkpoints.io")  # from ..errors import ...
    assert "focalnet.factory" in imports("focalnet.cli.models")  # inside a function
    assert "focalnet.models" in imports("focalnet.registry")
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"a"}}) == [["a"]] and cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if layer(name) is None]
    assert not unplaced, (
        "modules in no layer: add each to LAYERS here and to docs/architecture.md" + _lines(unplaced)
    )


def test_imports_name_modules_that_exist():
    missing = [f"{name} imports {t}" for name in modules() for t in sorted(imports(name)) if t not in modules()]
    assert not missing, "imports of focalnet modules that do not exist:" + _lines(missing)


def test_no_import_circle():
    found = cycles(_graph())
    assert not found, "import circles (every import counts, function-level too):" + _lines(
        " <-> ".join(c) for c in found
    )


def layer_violations(
    graph: dict[str, set[str]], exceptions: Optional[dict[tuple[str, str], str]] = None
) -> Iterator[str]:
    """Every import in `graph` (module -> the modules it imports) against the layer rule."""
    exceptions = APPLICATION_EXCEPTIONS if exceptions is None else exceptions
    for name, targets in sorted(graph.items()):
        own = layer(name)
        for target in sorted(targets):
            theirs = layer(target)
            if own is None or theirs is None:
                continue  # test_every_module_has_a_layer says so
            if theirs > own:
                yield (f"{name} ({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[theirs]}): a layer imports only "
                       "its own or lower ones; move the shared helper down")
            a, b = application(name), application(target)
            if a and b and a != b and (a, b) not in exceptions:
                yield (f"{name} imports {target}: applications do not import each other (not even through {b}'s "
                       "__init__); move what both need down a layer, or write the exception and its reason in "
                       "APPLICATION_EXCEPTIONS")


def test_dependencies_run_one_way():
    found = list(layer_violations(_graph()))
    assert not found, "dependencies against the layer rule (docs/architecture.md):" + _lines(found)


def test_the_layer_check_catches_imports_between_applications():
    # the checker itself, on made-up imports: through a package's __init__, into its internals, upwards
    assert list(layer_violations({"focalnet.train.run": {"focalnet.inspect"}}, {}))
    assert list(layer_violations({"focalnet.train.run": {"focalnet.inspect.pictures"}}, {}))
    assert list(layer_violations({"focalnet.models": {"focalnet.checkpoints.io"}}, {}))
    assert not list(layer_violations({"focalnet.train.run": {"focalnet.inspect"}}, {("focalnet.train", "focalnet.inspect"): "why"}))
    assert not list(layer_violations({"focalnet.train.run": {"focalnet.train.loop", "focalnet.factory"}}, {}))
    # and the reader sees an import of a package's __init__ however it is spelled
    for text in ("from .. import inspect", "from ..inspect import write_pictures", "import focalnet.inspect",
                 "from focalnet import inspect"):
        assert _targets("focalnet.train.run", ast.parse(text).body[0]) == ["focalnet.inspect"], text


def test_applications_do_not_import_each_other_in_a_circle():
    # APPLICATION_EXCEPTIONS may allow an import between applications, never a circle of them
    graph: dict[str, set[str]] = {}
    for name, targets in _graph().items():
        a = application(name)
        if a:
            graph.setdefault(a, set()).update(b for t in targets if (b := application(t)) and b != a)
    found = cycles(graph)
    assert not found, "application packages that import each other in a circle:" + _lines(
        " <-> ".join(c) for c in found
    )


def test_application_exceptions_are_real_and_explained():
    for (a, b), why in APPLICATION_EXCEPTIONS.items():
        assert application(a) == a and application(b) == b and a != b and why.strip(), (a, b)


def long_functions() -> list[str]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(tree(name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} ({n} lines)")
    return sorted(out)


def test_no_function_over_80_lines():
    found = long_functions()
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} lines: split each into named steps, each a function a test can call:"
        + _lines(found)
    )
