"""The package's layout as the README states it: every module listed under its layer, and
every import of a package module, lazy ones (inside a function) included, from a layer before
its own or from a module listed above it in its own layer (no cycles, no upward imports)."""
import re
from pathlib import Path

import pytest

import gradguess
from gradguess.book import store

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(gradguess.__file__).parent


def readme_layout() -> list[tuple[str, str]]:
    """(layer, module) in the README's order."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("src/gradguess/\n"):]
    block = block[:block.index("```")]
    layout, layer = [], None
    for line in block.splitlines():
        if m := re.match(r"^  (\w+)/ ", line):
            layer = m.group(1)
        elif m := re.match(r"^    (\w+)\.py ", line):
            layout.append((layer, m.group(1)))
    return layout


def package_modules() -> set[str]:
    """Every module of the package but its packages' ``__init__``, as ``layer.module``."""
    return {name.removeprefix("gradguess.") for name in store.package_modules()
            if not store.module_path(name).name == "__init__.py"}


def imported_modules(source: str, own: str) -> set[str]:
    """The package modules (``layer.module``) that ``source`` (module ``own``) imports,
    anywhere in it: the run store's scan (`store.imported_by`), packages left out."""
    return {name.removeprefix("gradguess.")
            for name in store.imported_by(source, f"gradguess.{own}")} & package_modules() - {own}


def test_the_readme_lists_every_module_under_its_layer():
    listed = [f"{layer}.{module}" for layer, module in readme_layout()]
    assert sorted(listed) == sorted(package_modules())


def test_the_layers_are_the_subpackages_in_order():
    layers = list(dict.fromkeys(layer for layer, _ in readme_layout()))
    assert layers == ["core", "engine", "analysis", "book"]
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(layers)


@pytest.mark.parametrize("position", range(len(readme_layout())),
                         ids=[f"{l}.{m}" for l, m in readme_layout()])
def test_a_module_imports_only_from_before_it(position):
    order = [f"{layer}.{module}" for layer, module in readme_layout()]
    own = order[position]
    source = (PACKAGE / (own.replace(".", "/") + ".py")).read_text()
    later = imported_modules(source, own) - set(order[:position])
    assert not later, f"{own} imports {sorted(later)}, listed after it in the README"


def test_the_scan_sees_lazy_and_relative_imports():
    source = ("from ..core import guesses\nfrom .grid import Run\n"
              "def f():\n    from ..book.plotting import color\n    import gradguess.core.data\n")
    assert imported_modules(source, "engine.training") == {
        "core.guesses", "engine.grid", "book.plotting", "core.data"}
