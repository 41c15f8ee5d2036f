"""The package imports one way: down a declared order of layers, and never in a circle.

Every `imagesieve.*` import counts, at module level (TYPE_CHECKING included) or inside a function:
an import moved into a function still ties the two modules together. A module may import its own
layer and the layers listed before it in LAYERS. A new module must be placed in a layer below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import imagesieve

PACKAGE = Path(imagesieve.__file__).parent

# Lowest first: (layer, modules or packages under `imagesieve`, why it stands there). "" is the package itself.
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("util", ("images", "storage", "util"),
     "bytes, pixels, files, paths and processes: nothing here knows a task"),
    ("model", ("tasks", "stages.base", "tar", "progress"),
     "tasks, the stage interface and the tar shards they come from: what every stage and executor shares"),
    ("matching", ("matching",), "the finders' algorithms on arrays and files: no stage, no executor"),
    ("stages", ("stages",), "units of work on tasks, each usable alone, whatever runs them"),
    ("executors", ("executors",), "decide where stages run, knowing them only through the stage interface"),
    ("pipeline", ("pipeline",), "a checked list of stages, and the units of input it runs on"),
    ("report", ("report",), "reads a finished run's folder (thumbnails on an executor); dedup's last step"),
    ("workflows", ("workflows",), "whole commands: pipelines, finders and reports; the sample data"),
    ("cli", ("cli", "", "__main__"),
     "the command line and the package's public names, over everything"),
]


def module_name(path: Path) -> str:
    parts = ["imagesieve", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The module of this package that `name` (a module or a name inside one) lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_in(source: str, module: str, is_package: bool = False) -> dict[str, int]:
    """The modules of this package that `module`'s source imports, each with the line of its first import."""
    package = module if is_package else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import submodule` imports the submodule; `from module import name`, the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "imagesieve" and (imported := resolve(target)) not in (None, module):
                found.setdefault(imported, node.lineno)
    return found


GRAPH = {module: imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
         for module, path in MODULES.items()}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry that names `module` or a package holding it."""
    relative = module.removeprefix("imagesieve").removeprefix(".")
    best: tuple[int, int] | None = None
    for index, (_, entries, _) in enumerate(LAYERS):
        for entry in entries:
            names_it = relative == entry or (entry != "" and relative.startswith(entry + "."))
            if names_it and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def where(module: str, target: str) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{GRAPH[module][target]} imports {target}"


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == [], "place these modules in LAYERS"


def test_no_import_circles():
    """Depth-first search; a circle is reported as the chain of imports that closes it."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all below it is seen
    circles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in GRAPH[module]:
            if state.get(target) == "open":  # on the current path: the imports from there to here close a circle
                loop = [*path[path.index(target):], target]
                circles.append("\n  ".join(where(a, b) for a, b in zip(loop, loop[1:], strict=False)))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n  " + "\n\n  ".join(circles)


def test_imports_run_down_the_layers():
    upward = [f"{where(module, target)} ({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})"
              for module, targets in GRAPH.items() for target in targets
              if None not in (layer_of(module), layer_of(target)) and layer_of(target) > layer_of(module)]
    assert not upward, "imports that run up the layers (move the shared piece down instead):\n  " + "\n  ".join(upward)


def test_the_check_sees_function_level_and_relative_imports():
    source = ("from __future__ import annotations\nfrom . import writer\nfrom .sidecar import filter_sidecar\n"
              "def f():\n    from imagesieve.executors.local import LocalExecutor\n")
    assert imports_in(source, "imagesieve.stages.io.folder") == {
        "imagesieve.stages.io.writer": 2, "imagesieve.stages.io.sidecar": 3, "imagesieve.executors.local": 5}
    assert layer_of("imagesieve.stages.base") == 1 and layer_of("imagesieve.stages.io.writer") == 3
    assert layer_of("imagesieve") == len(LAYERS) - 1


def remote_questions(source: str) -> list[int]:
    """The lines where `source` names `is_remote`: called, imported (under any name) or read as an attribute."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source))
                   if (isinstance(node, ast.Name) and node.id == "is_remote")
                   or (isinstance(node, ast.Attribute) and node.attr == "is_remote")
                   or (isinstance(node, ast.ImportFrom) and any(a.name == "is_remote" for a in node.names))})


def test_only_storage_asks_whether_a_path_is_remote():
    """Issue 23: every read and write goes through `imagesieve.storage`, which alone picks the local file
    system or fsspec. Above it, code says what it wants (publish this file, a local copy, list these
    files, can this folder take hard links?) and never asks whether a path is remote."""
    asking = [f"{path.relative_to(PACKAGE.parent)}:{line}" for module, path in MODULES.items()
              if not (module + ".").startswith("imagesieve.storage.")
              for line in remote_questions(path.read_text(encoding="utf-8"))]
    assert asking == [], "ask imagesieve.storage for what you need instead:\n  " + "\n  ".join(asking)


def test_the_remote_check_sees_imports_calls_and_attributes():
    source = ("from imagesieve.storage import is_remote as far\nimport imagesieve.storage as s\n"
              "x = s.is_remote('s3://b')\ndef f(p):\n    return is_remote(p)\nis_remoteness = 1\n")
    assert remote_questions(source) == [1, 3, 5]
