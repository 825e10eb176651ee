"""One look for every figure: seaborn's theme, a fixed colour and label per method."""
import matplotlib.pyplot as plt
import seaborn as sns

METHOD_LABELS = {
    "backprop": "backprop",
    "directional": "directional descent",
    "matched_cosine": "matched-cosine directional",
    "activation_perturbation": "activation perturbation",
    "activation_mixing": "activation mixing",
    "w_transpose": "$W^T$",
    "downstream": "1-layer downstream",
    "self_sharpening": "self-sharpening",
    "singular_power": "$W^T$, singular values$^p$",
}
METHOD_COLORS = dict(zip(METHOD_LABELS, sns.color_palette("tab10", len(METHOD_LABELS))))


def set_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight"})


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def color(method: str):
    return METHOD_COLORS.get(method, "gray")
