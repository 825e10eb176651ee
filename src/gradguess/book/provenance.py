"""Where and how a chapter was executed: scale, device, data, seed, versions, commit, the
fingerprint of the code it ran (its source, the rules and the package modules it reaches), time."""
import hashlib
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from ..engine import step
from .store import imported_by, reach_fingerprint, reach_of

PACKAGE = Path(__file__).resolve().parents[1]
CHAPTER_SOURCES = PACKAGE.parents[1] / "book" / "chapters"  # in a checkout of the book
PACKAGES = ("gradguess", "torch", "torchvision", "numpy", "matplotlib", "seaborn", "torch-optimi")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(path=None) -> str:
    """The checkout's commit, with "+changes" when tracked files differ from it (other than
    the executed chapters and the runs' records, which an execution writes)."""
    cwd = Path(path or Path(__file__).parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)book/executed",
                                ":(top,exclude)book/runs"],
                               cwd=cwd, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+changes" if dirty else "")


def chapter_code(text: str) -> list[str]:
    """The code cells (```{code-cell}) of a MyST chapter: their options (``:tags: ...`` lines
    or a ``---`` block) and lines of IPython syntax (``%magic``, ``!shell``) blanked."""
    cells = re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", text, flags=re.M | re.S)
    code = []
    for cell in cells:
        lines = cell.splitlines()
        if lines and lines[0].strip() == "---":  # a YAML block of options
            end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), 0)
            lines[:end + 1] = [""] * (end + 1)
        code.append("\n".join("" if line.lstrip().startswith(("%", "!")) or line.startswith(":")
                               else line for line in lines))
    return code


def _parsed_imports(code: str) -> set[str]:
    """The package modules ``code``'s import statements name; a line Python cannot parse
    (IPython syntax the filter missed) is blanked and the cell parsed again."""
    lines = code.splitlines()
    for _ in range(len(lines) + 1):
        try:
            return imported_by("\n".join(lines))
        except SyntaxError as error:
            if not error.lineno or error.lineno > len(lines) or not lines[error.lineno - 1]:
                return set()
            lines[error.lineno - 1] = ""
    return set()


def chapter_reach(chapter: str) -> list[str]:
    """The package modules chapter ``chapter`` reaches: every ``gradguess`` module its code
    cells import (lazy imports included) and, transitively, what those import (`store.reach`)."""
    text = (CHAPTER_SOURCES / f"{chapter}.md").read_text()
    return reach_of(set().union(*map(_parsed_imports, chapter_code(text)), set()))


def source_fingerprint(chapter: str) -> str:
    """A hash of the code an execution of ``chapter`` runs: the chapter's own source
    (book/chapters/<chapter>.md), the registered rules (book/rules.toml) and the package
    modules the chapter reaches (`chapter_reach`), names and sources; an edit of a module
    outside its reach (another chapter's analysis) leaves it as it was. A committed
    execution whose fingerprint differs from today's ran other code (tests/test_book.py
    checks)."""
    source = CHAPTER_SOURCES / f"{chapter}.md"
    if not source.exists():
        return "unknown (no chapter source at hand)"
    digest = hashlib.sha256()
    rules = CHAPTER_SOURCES.parent / "rules.toml"
    for path in (rules, source):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(reach_fingerprint(chapter_reach(chapter)).encode())
    return digest.hexdigest()[:16]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"cpu: {platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)}"


def provenance(*, scale: str, device: torch.device, dataset: str, data_source: str, seed: int,
               started: float, settings: dict | None = None, extra: dict | None = None,
               chapter: str | None = None) -> dict:
    """A record of this execution; ``started`` is the ``time.perf_counter()`` at its start.
    Every one of the chapter's ``settings`` gets a row ``setting: <name>``; ``chapter`` names
    whose `source_fingerprint` it records."""
    record = {
        "scale": scale,
        "device": device_name(device),
        "dataset": f"{dataset} ({data_source})" if data_source else dataset,
        "seed": seed,
        "float32 matmuls": ("TF32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
                            else "full float32"),
        "compiled step": _compiled(device),
        "git commit": git_commit(),
        "source fingerprint": source_fingerprint(chapter) if chapter else "–",
        "python": platform.python_version(),
        **{package: _version(package) for package in PACKAGES},
        "executed at (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        **{f"setting: {name}": _setting(name, value, device) for name, value in (settings or {}).items()},
        **(extra or {}),
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    return record


def _compiled(device: torch.device) -> str:
    """Whether the stacks' steps ran compiled (`engine.step`), and the time spent compiling."""
    mode = step.setting()
    if not step.compiles(device):
        return f"no, eager (GRADGUESS_COMPILE={mode})"
    how = "torch.compile with CUDA graphs" if device.type == "cuda" else "torch.compile"
    return f"yes, {how} (GRADGUESS_COMPILE={mode}), {step.compile_seconds():.0f} s compiling"


def _setting(name: str, value, device: torch.device) -> str:
    """A setting as the provenance shows it; ``tf32`` says that it applies on a GPU only."""
    if name == "tf32" and device.type != "cuda":
        return f"{_plain(value)} (TF32 applies on a GPU only; this run: full float32)"
    return _plain(value)


def _plain(value) -> str:
    """A setting as text: sequences without brackets' clutter, None as "all"."""
    if value is None:
        return "all"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) if not isinstance(v, (list, tuple))
                         else "x".join(map(str, v)) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
