"""One look for every figure and table: seaborn's theme; each method's colour and label come
from its record in `gradguess.core.methods`; `variants` draws the variants of one method (its
estimators, its k or p) in shades of its colour, told apart by line style; `table` shows a
DataFrame as a reader wants it."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_hex
from matplotlib.ticker import MaxNLocator

from ..core.methods import METHODS, shade

LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))
HIGHLIGHT = "#d8ecd8"  # a table's best cell (the report's shade of "reproduced")


def set_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight"})


def label(method: str) -> str:
    """A method's name in figures and tables (`gradguess.core.methods`); other names as given."""
    return METHODS[method].label if method in METHODS else method


def color(method: str):
    """A method's colour (`gradguess.core.methods`); a variant's is a shade of its family's."""
    return METHODS[method].color if method in METHODS else "gray"


def variants(method: str, n: int) -> list[dict]:
    """Line styles for ``n`` variants of ``method`` in one figure (its estimators, its k or p):
    shades of the method's colour from dark to light, each with its own dash pattern, as
    ``plot`` keywords (``color``, ``linestyle``)."""
    if n < 1:
        raise ValueError(f"a figure draws at least one variant, got n={n}")
    if n > len(LINESTYLES):
        raise ValueError(f"at most {len(LINESTYLES)} variants of one method can be told apart, got {n}")
    amounts = np.linspace(-0.35, 0.45, n) if n > 1 else [0.0]
    return [{"color": shade(to_hex(color(method)), float(a)), "linestyle": style}
            for a, style in zip(amounts, LINESTYLES)]


def whole_ticks(ax, axis: str = "x") -> None:
    """Ticks on whole numbers only (epochs, layers): no 1.25 or 2.5 epochs."""
    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))


def _whole(column: pd.Series) -> bool:
    values = pd.to_numeric(column, errors="coerce")
    finite = values[np.isfinite(values)]
    return (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
            and len(finite) > 0 and bool((finite == finite.round()).all()))


def table(frame: pd.DataFrame, *, digits: int = 1, formats: dict | None = None,
          caption: str | None = None):
    """``frame`` as the book shows it: method identifiers (``w_transpose``) in its index and
    columns replaced by their names (Wᵀ), whole-number columns without decimals, other numbers
    to ``digits`` decimals or to ``formats[column]`` (a format string or a function), missing
    values as "–". Text wraps to the page's width (the book's CSS, book/_static/)."""
    shown = frame.rename(index=label, columns=label)
    given = {label(k): v for k, v in (formats or {}).items()}
    chosen = {}
    for column in shown.columns:
        if column in given:
            chosen[column] = given[column]
        elif _whole(shown[column]):
            chosen[column] = "{:,.0f}"
        elif pd.api.types.is_float_dtype(shown[column]):
            chosen[column] = f"{{:,.{digits}f}}"
    styler = shown.style.format(chosen, na_rep="–")
    return styler.set_caption(caption) if caption else styler
