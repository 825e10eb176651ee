"""The method registry is the one place a method is named: estimators, the fused path, prompt
tuning, the cost model and the figures read their tables from it."""
import ast
from pathlib import Path

import pytest

import gradguess
from gradguess.book import plotting
from gradguess.analysis.cost import matmul_units
from gradguess.core.fused import FUSED_METHODS
from gradguess.core.methods import METHODS, SPACES, get_method, method_names
from gradguess.core.prompts import PROMPT_METHODS

PACKAGE = Path(gradguess.__file__).parent


def named_methods(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in METHODS]


def method_tables(source: str) -> list[str]:
    """Places in ``source`` that keep their own knowledge of methods by name: a comparison
    with a method's name, a dict keyed by names, a literal collection of several names.
    (Naming a method as an argument or a default value uses it; that is allowed.)"""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and named_methods(node):
            found.append(f"line {node.lineno}: compares with {named_methods(node)}")
        elif isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value in METHODS for k in node.keys):
            found.append(f"line {node.lineno}: a dict keyed by method names")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(
                [e for e in node.elts if isinstance(e, ast.Constant) and e.value in METHODS]) >= 2:
            found.append(f"line {node.lineno}: a list of method names")
    return found


# settings.py chooses which registered methods a chapter runs: a selection, not a table
@pytest.mark.parametrize("module", sorted(p.relative_to(PACKAGE).as_posix()
                                          for p in PACKAGE.rglob("*.py")
                                          if p.name not in ("methods.py", "settings.py")))
def test_no_module_but_the_registry_keeps_a_table_of_methods(module):
    assert method_tables((PACKAGE / module).read_text()) == []


def test_the_scan_finds_a_table_of_methods():
    source = 'LABELS = {"w_transpose": "W^T"}\nif method == "backprop": pass\nX = ("directional", "downstream")'
    assert len(method_tables(source)) == 3
    assert method_tables('train(model, data, "w_transpose")\ndef f(m="backprop"): pass') == []


def test_every_record_is_complete():
    for name, method in METHODS.items():
        assert method.name == name and method.label and method.color.startswith("#")
        assert method.space in SPACES
        assert (method.guess is not None) == (method.space in ("activations", "weights")), name
        assert plotting.label(name) == method.label and plotting.color(name) == method.color
    assert len({m.color for m in METHODS.values()}) == len(METHODS)  # figures tell them apart


def test_the_readers_derive_their_tables_from_the_registry():
    assert FUSED_METHODS == method_names(lambda m: m.guess_at is not None)
    assert set(PROMPT_METHODS) == {"backprop", "head_only", "directional",
                                   "activation_perturbation", "w_transpose"}
    assert all(get_method(m).prompt_guess is not None for m in PROMPT_METHODS
               if get_method(m).space not in ("exact", "none"))
    assert {m for m, _ in matmul_units()} <= set(METHODS)
    assert get_method("self_sharpening").exact_last and get_method("self_sharpening").fused


def test_unknown_method_fails_clearly():
    with pytest.raises(ValueError, match="unknown method 'method3'; known methods: backprop"):
        get_method("method3")
