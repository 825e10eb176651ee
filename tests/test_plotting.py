"""Tables as the book shows them (`plotting.table`) and the methods' labels."""
import re

import numpy as np
import pandas as pd

from gradguess.core.methods import METHODS
from gradguess.book.plotting import label, table


def cells(styler) -> list[str]:
    return re.findall(r'class="data [^"]*" >([^<]*)</td>', styler.to_html())


def test_method_identifiers_become_their_names_in_index_and_columns():
    frame = pd.DataFrame({"w_transpose": [1.0], "other": [2.0]}, index=["activation_mixing"])
    html = table(frame).to_html()
    assert "Wᵀ" in html and "activation mixing" in html
    assert "w_transpose" not in html and "activation_mixing" not in html


def test_whole_numbers_print_without_decimals_and_others_to_the_digits_asked():
    frame = pd.DataFrame({"count": [8.0, 12.0], "accuracy": [87.04, 0.5], "text": ["a", "b"]})
    assert cells(table(frame, digits=1)) == ["8", "87.0", "a", "12", "0.5", "b"]
    assert cells(table(frame, digits=3, formats={"accuracy": "{:.0%}"}))[:2] == ["8", "8704%"]


def test_missing_values_print_as_a_dash():
    assert cells(table(pd.DataFrame({"x": [1.5, np.nan]})))[1] == "–"


def test_labels_are_plain_text_that_html_shows_as_written():
    # a table cell is not typeset by MathJax: a label with $...$ would show its dollars
    assert not [m.label for m in METHODS.values() if "$" in m.label]
    assert label("w_transpose") == "Wᵀ" and label("not a method") == "not a method"


def _hue(color: str) -> float:
    import colorsys
    from matplotlib.colors import to_rgb
    return colorsys.rgb_to_hls(*to_rgb(color))[0]


def test_every_method_has_its_familys_hue_and_families_have_their_own():
    from gradguess.book.plotting import color
    families = {m.family for m in METHODS.values()}
    for method in METHODS.values():
        base = color(method.family)
        assert abs(_hue(color(method.name)) - _hue(base)) < 0.02, method.name
    bases = [color(f) for f in families]
    assert len(set(bases)) == len(bases), "two methods share a colour"


def test_variants_are_shades_of_their_method_told_apart_by_line_style():
    from gradguess.book.plotting import color, variants
    styles = variants("downstream", 4)
    assert len({s["color"] for s in styles}) == 4 and len({str(s["linestyle"]) for s in styles}) == 4
    for style in styles:
        assert abs(_hue(style["color"]) - _hue(color("downstream"))) < 0.02
    import pytest
    with pytest.raises(ValueError, match="at most"):
        variants("downstream", 8)
