"""The import contract of the fedmask package, checked on the source of every module.

Layers, outermost first; a module may import its own layer and the layers below it, never above:

    entry points   fedmask.cli, fedmask.bench, fedmask.demo, fedmask.testing, fedmask.audit
    roles          fedmask.coordinator, fedmask.participant (and neither imports the other)
    shared         fedmask.pki, fedmask.adapter, fedmask.proto, fedmask.durable, fedmask.parallel
    ddp            fedmask.ddp
    core           fedmask.secagg (no grpc, torch, sockets, clocks or global randomness:
                   tests/secagg/test_imports.py)

Imports inside functions count as much as those at the top: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("fedmask.cli", "fedmask.bench", "fedmask.demo", "fedmask.testing", "fedmask.audit"),
    ("fedmask.coordinator", "fedmask.participant"),
    ("fedmask.pki", "fedmask.adapter", "fedmask.proto", "fedmask.durable", "fedmask.parallel"),
    ("fedmask.ddp",),
    ("fedmask.secagg",),
)
INDEPENDENT: tuple[tuple[str, str], ...] = (("fedmask.coordinator", "fedmask.participant"),)
# The shared layers and below run on the coordinator too: no ML stack there.
NO_ML_BELOW: tuple[str, ...] = (
    "fedmask.pki",
    "fedmask.proto",
    "fedmask.durable",
    "fedmask.parallel",
    "fedmask.ddp",
    "fedmask.secagg",
)
ML_MODULES = frozenset({"torch", "transformers", "peft", "opacus"})


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def package_directories() -> dict[str, Path]:
    """fedmask's packages and the folders they install from (pyproject's package-dir)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    directories = {}
    for package in config["packages"]:
        root = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        rest = package[len(root) :].lstrip(".")
        directories[package] = REPO / mapping[root] / Path(*rest.split(".")) if rest else REPO / mapping[root]
    return directories


def source_modules() -> dict[str, Path]:
    modules = {}
    for package, directory in package_directories().items():
        for path in sorted(directory.glob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue  # generated code imports only protobuf and its sibling
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imports_of(module: str, path: Path) -> Iterable[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from fedmask import pki` imports the module fedmask.pki.
                yield Import(module, f"{base}.{alias.name}" if base == "fedmask" else base, node.lineno)


def layer_of(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return index
    return None


def group_of(module: str) -> str | None:
    return next((top for layer in LAYERS for top in layer if module == top or module.startswith(top + ".")), None)


def violations(imports: Iterable[Import]) -> list[str]:
    found = []
    for edge in imports:
        source, target = layer_of(edge.importer), layer_of(edge.imported)
        where = f"{edge.importer}:{edge.line} imports {edge.imported}"
        if edge.imported.split(".")[0] in ML_MODULES and group_of(edge.importer) in NO_ML_BELOW:
            found.append(f"{where} (no ML stack in {group_of(edge.importer)})")
        if source is None or target is None:
            continue
        if target < source:
            found.append(f"{where} (an outer layer)")
        for first, second in INDEPENDENT:
            if {group_of(edge.importer), group_of(edge.imported)} == {first, second}:
                found.append(f"{where} ({first} and {second} are independent)")
    return found


def all_imports(modules: Mapping[str, Path]) -> list[Import]:
    return [edge for module, path in modules.items() for edge in imports_of(module, path)]


def test_every_module_is_in_a_layer() -> None:
    modules = source_modules()
    assert len(modules) > 60
    unplaced = sorted(m for m in modules if m != "fedmask" and layer_of(m) is None)
    assert unplaced == []


def test_the_layers_hold() -> None:
    assert violations(all_imports(source_modules())) == []


def test_the_roles_are_independent_and_use_the_shared_layers() -> None:
    edges = all_imports(source_modules())
    targets = {group_of(e.imported) for e in edges if group_of(e.importer) == "fedmask.participant"}
    assert {"fedmask.adapter", "fedmask.proto", "fedmask.secagg"} <= targets
    assert "fedmask.coordinator" not in targets
    targets = {group_of(e.imported) for e in edges if group_of(e.importer) == "fedmask.coordinator"}
    assert {"fedmask.adapter", "fedmask.pki", "fedmask.proto", "fedmask.secagg"} <= targets
    assert "fedmask.participant" not in targets


@pytest.mark.parametrize(
    ("edge", "why"),
    [
        (Import("fedmask.participant.node", "fedmask.coordinator.pki", 1), "independent"),
        (Import("fedmask.coordinator.federation", "fedmask.participant.training", 1), "independent"),
        (Import("fedmask.secagg.client", "fedmask.ddp.mechanism", 1), "an outer layer"),
        (Import("fedmask.pki.roster", "fedmask.cli.pki", 1), "an outer layer"),
        (Import("fedmask.ddp.samplers", "torch", 1), "no ML stack"),
    ],
)
def test_the_check_catches_each_kind_of_violation(edge: Import, why: str) -> None:
    (problem,) = violations([edge])
    assert why in problem


def test_relative_and_lazy_imports_are_resolved(tmp_path: Path) -> None:
    source = tmp_path / "node.py"
    source.write_text("from . import trainer\nfrom ..adapter import model\n\ndef f():\n    from fedmask import pki\n")
    found = {edge.imported for edge in imports_of("fedmask.participant.node", source)}
    assert found == {"fedmask.participant", "fedmask.adapter", "fedmask.pki"}
