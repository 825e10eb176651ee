"""Named scales a chapter runs at, and the device it runs on.

A scale is a name for how much of each experiment to run: ``small`` fits a 2-core CPU in
minutes; ``gpu`` runs the paper's architectures on full data with fewer epochs, the whole book
in one 10-minute call on one H100 with compiled steps by the estimate of
``benchmarks/gpu_estimate.py`` (not yet measured); ``paper`` follows the paper's protocol and wants a GPU for hours. What each scale means for a
chapter, in numbers, is that chapter's settings (`gradguess.book.settings`). The environment variable
``GRADGUESS_SCALE`` overrides the scale a chapter asks for (CI sets it to ``small``), and
``GRADGUESS_DEVICE`` the device.
"""
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scale:
    name: str
    description: str


SCALES = {
    "small": Scale("small", "2-core CPU, minutes: subsets, few epochs, narrow MLPs"),
    "gpu": Scale("gpu", "one H100, the whole book in under 10 minutes (estimated): the paper's "
                        "architectures on full data, >= 3 seeds, a few epochs"),
    "paper": Scale("paper", "the paper's protocol on a GPU: full data, (3|6) x (128|1024) MLPs"),
}


def run_in_words(scale: str, device: str) -> str:
    """Where a run was made, as the book writes it everywhere: its scale and the kind of device
    (``device`` as a ledger or a provenance cell records it, "cpu", "cuda: NVIDIA H200"). A
    ``gpu`` or ``paper`` scale run on a CPU says so."""
    kind = "a GPU" if str(device).startswith("cuda") else "a CPU"
    if scale in ("gpu", "paper") and kind == "a CPU":
        return f"{scale} scale, run on a CPU instead of a GPU"
    return f"{scale} scale on {kind}"


def get_scale(name: str = "small") -> Scale:
    """The scale ``name``, unless ``GRADGUESS_SCALE`` names another."""
    chosen = os.environ.get("GRADGUESS_SCALE") or name
    if chosen not in SCALES:
        raise ValueError(f"unknown scale {chosen!r}; known scales: {', '.join(SCALES)}")
    return SCALES[chosen]


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; other names are checked.

    The environment variable ``GRADGUESS_DEVICE`` overrides ``device`` (CI sets ``cpu`` to
    re-execute chapters that were run on a GPU).
    """
    device = os.environ.get("GRADGUESS_DEVICE") or device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:n]'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU; "
                         "use device='auto' or 'cpu'")
    return resolved
