"""The import rule of the house: data flows one way (vgg <- pipeline <- trainer; evaluation never imports trainer)."""

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
