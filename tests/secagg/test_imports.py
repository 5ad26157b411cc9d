"""secagg is sans-I/O: no transport, no ML framework, no clocks, no ambient randomness."""

import ast
import pathlib

import pytest

SECAGG = pathlib.Path(__file__).resolve().parents[2] / "secagg"
FORBIDDEN_MODULES = {
    "grpc",
    "torch",
    "socket",
    "ssl",
    "asyncio",
    "selectors",
    "http",
    "urllib",
    "requests",
    "time",
    "datetime",
    "random",
    "secrets",
    "threading",
    "multiprocessing",
    "subprocess",
    "transformers",
    "peft",
    "opacus",
}
# The OS CSPRNG is reachable only through the injected SystemRandom.
MAY_IMPORT_OS = {"rand.py"}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(SECAGG.glob("*.py")), ids=lambda p: p.name)
def test_no_io_imports(path):
    imports = _imports(path)
    roots = {name.split(".")[0] for name in imports}
    assert not roots & FORBIDDEN_MODULES, f"{path.name} imports {sorted(roots & FORBIDDEN_MODULES)}"
    # Within fedmask, secagg is the bottom layer: it imports only itself.
    outside = {name for name in imports if name.startswith("fedmask") and not name.startswith("fedmask.secagg")}
    assert not outside, f"{path.name} imports {sorted(outside)}"
    if path.name not in MAY_IMPORT_OS:
        assert "os" not in roots, f"{path.name} imports os"


@pytest.mark.parametrize("path", sorted(SECAGG.glob("*.py")), ids=lambda p: p.name)
def test_no_global_numpy_randomness(path):
    source = path.read_text()
    assert "np.random" not in source and "numpy.random" not in source


def test_every_module_is_checked():
    assert len(list(SECAGG.glob("*.py"))) >= 12
