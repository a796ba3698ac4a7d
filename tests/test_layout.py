"""The import rule of the house: data flows one way (vgg <- pipeline <- trainer; evaluation never imports trainer), and
no package's modules import each other in a circle."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"vgg", "pipeline", "trainer", "evaluation"}
ALLOWED_OURS = {"vgg": set(), "pipeline": {"vgg"}, "trainer": {"vgg", "pipeline"}, "evaluation": {"vgg", "pipeline"}}
# The paper as code imports torch and numpy only (plus the standard library).
VGG_THIRD_PARTY = {"torch", "numpy"}


def top_level_imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg", sorted(OURS))
def test_import_rule(pkg):
    files = package_files(pkg)
    assert files, f"package {pkg} has no modules"
    for path in files:
        imported = top_level_imports(path)
        forbidden = (imported & OURS) - ALLOWED_OURS[pkg] - {pkg}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"
        if pkg == "vgg":
            third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in OURS}
            assert third_party <= VGG_THIRD_PARTY, f"{path.relative_to(ROOT)} imports {sorted(third_party)}"


def test_rule_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ray\nfrom trainer.loop import x\n")
    assert top_level_imports(bad) == {"ray", "trainer"}


def imported_modules(path: Path) -> set[str]:
    """Dotted names a file imports anywhere (inside functions too); ``from a import b`` gives ``a`` and ``a.b``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def import_circle(root: Path, pkg: str) -> list[str]:
    """A circle of imports among one package's modules (first module repeated at the end), or [] if there is none.

    Imports inside functions count: a lazy import still makes the two modules one unit that cannot be read or
    changed apart (which is why a backend must not import the factory that imports it).
    """
    modules = {".".join(p.relative_to(root).with_suffix("").parts): p for p in sorted((root / pkg).rglob("*.py"))}
    modules = {name.removesuffix(".__init__"): p for name, p in modules.items()}
    edges = {m: sorted(n for n in imported_modules(p) if n in modules and n != m) for m, p in modules.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> list[str]:
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return []
        for n in edges[m]:
            circle = visit(n, path + [m])
            if circle:
                return circle
        done.add(m)
        return []

    for m in modules:
        circle = visit(m, [])
        if circle:
            return circle
    return []


@pytest.mark.parametrize("pkg", sorted(OURS))
def test_no_import_circle_inside_a_package(pkg):
    circle = import_circle(ROOT, pkg)
    assert not circle, "import circle: " + " -> ".join(circle)


def test_circle_checker_sees_a_circle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "factory.py").write_text("def make():\n    from pkg.backend import Backend\n    return Backend()\n")
    (pkg / "backend.py").write_text("from pkg.helpers import x\n\nclass Backend:\n    pass\n")
    (pkg / "helpers.py").write_text("from pkg import factory\nx = 1\n")
    (pkg / "other.py").write_text("import pkg.helpers\n")
    assert import_circle(tmp_path, "pkg") == ["pkg.backend", "pkg.helpers", "pkg.factory", "pkg.backend"]
    (pkg / "helpers.py").write_text("x = 1\n")
    assert import_circle(tmp_path, "pkg") == []


# A module longer than this is doing more than one job; split it by job, or say at its top (in its docstring, as
# "one cohesive thing: <why>") why it is one thing.
MAX_LINES = 450
SIZED = ("vgg", "pipeline", "trainer", "evaluation")
COHESIVE = "one cohesive thing:"


@pytest.mark.parametrize("pkg", SIZED)
def test_modules_are_split_by_job(pkg):
    long = {}
    for path in package_files(pkg):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and COHESIVE not in " ".join(doc.split()):
            long[str(path.relative_to(ROOT))] = len(text.splitlines())
    assert not long, f"modules over {MAX_LINES} lines that do not say why they are one thing: {long}"
