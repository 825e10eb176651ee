"""The package's layout as the README states it: every module listed, and each module's
top-level imports only from modules listed above it (no cycles)."""
import ast
import re
from pathlib import Path

import gradguess

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(gradguess.__file__).parent


def readme_order() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("src/gradguess/\n"):]
    block = block[:block.index("```")]
    return re.findall(r"^  (\w+)\.py ", block, re.M)


def package_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in tree.body:  # top level only: an import inside a function is deferred
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_the_readme_lists_every_module():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert sorted(readme_order()) == sorted(modules)


def test_modules_import_only_from_modules_above_them():
    order = readme_order()
    for k, module in enumerate(order):
        below = package_imports(module) - set(order[:k])
        assert not below, f"{module} imports {below}, listed below it in the README"
