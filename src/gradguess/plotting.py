"""One look for every figure: seaborn's theme; each method's colour and label come from its
record in `gradguess.methods`."""
import matplotlib.pyplot as plt
import seaborn as sns

from .methods import METHODS


def set_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight"})


def label(method: str) -> str:
    """A method's name in figures and tables (`gradguess.methods`); other names as given."""
    return METHODS[method].label if method in METHODS else method


def color(method: str):
    return METHODS[method].color if method in METHODS else "gray"
