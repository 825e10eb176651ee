"""A chapter's runtime: from its parameters cell to typed settings, device, data and claims
ledger, and back out through its closing cells (ledger table, verdicts, provenance).

A chapter opens with

    chapter = start("bias", scale=scale, device=device, dataset=dataset, seed=seed, cache=cache)
    S, data = chapter.settings, chapter.data

and closes with ``chapter.close()`` (publish the ledger, show it), ``chapter.verdicts()``
(the line per claim that CI compares) and ``chapter.provenance()`` (where, how and from which
code it ran, with every setting).
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property

import pandas as pd
import torch

from . import cluster, plotting
from .store import CACHE_STATS, Store, records_folder
from ..core.data import DataNotFoundError, Dataset, load_dataset
from .ledger import Claim, Ledger
from .provenance import git_commit, provenance
from .scales import Scale, get_scale, resolve_device, run_in_words
from .settings import chapter_settings

_FROM_SETTINGS = object()  # "the size the chapter's settings give"


@dataclass
class Chapter:
    name: str
    scale: Scale
    settings: object  # the chapter's dataclass of `gradguess.book.settings`, at this scale
    device: torch.device
    seed: int
    dataset: str | None
    cache: str | None = None  # folder of cached runs (None: $GRADGUESS_CACHE or the default)
    executor: object = None  # where missed chunks are computed (`cluster`; None: here)
    data: Dataset | None = None
    datasets: dict = field(default_factory=dict)  # every dataset loaded, for provenance
    started: float = field(default_factory=time.perf_counter)
    cache_counts: dict = field(default_factory=lambda: dict(CACHE_STATS))

    def __post_init__(self):
        self.ledger = Ledger(self.name, self.scale.name, str(self.device), self.dataset or "–",
                             self.seed)

    def load(self, name: str, *, train_size=_FROM_SETTINGS, test_size=_FROM_SETTINGS,
             download: bool = False, subset_seed: int | None = None) -> Dataset:
        """Dataset ``name`` on the chapter's device, cut to the settings' sizes (a random
        subset fixed by ``subset_seed``, default the chapter's seed)."""
        if train_size is _FROM_SETTINGS:
            train_size = getattr(self.settings, "train_size", None)
        if test_size is _FROM_SETTINGS:
            test_size = getattr(self.settings, "test_size", None)
        data = load_dataset(name, device=self.device, download=download).subset(
            train_size, test_size, seed=self.seed if subset_seed is None else subset_seed)
        self.datasets[data.name] = data.source
        return data

    @cached_property
    def store(self) -> Store:
        """The run store: the local folder ``cache``, and at a scale other than small the
        committed records in book/runs/<scale>/records/ (`gradguess.book.store`)."""
        return Store(self.cache, records=records_folder(self.scale.name), commit=git_commit(),
                     executor=self.executor)

    def load_found(self, names) -> dict:
        """{name: dataset} of those of ``names`` found on this machine, each loaded as `load`
        loads it; the others are left out (nothing is downloaded)."""
        found = {}
        for name in names:
            try:
                found[name] = self.load(name)
            except DataNotFoundError:
                pass
        return found

    def cached(self, fn, /, *args, **kwargs):
        """``fn(*args, **kwargs)``, computed once: keyed by the call and the code it reaches
        (`gradguess.book.store`)."""
        return self.store.call(fn, *args, **kwargs)

    def side_by_side(self, fn, items) -> list:
        """``[fn(item) for item in items]`` for independent items (each its own cached calls):
        with the Ray executor, in threads of this process, so that the chunks of all of them
        are on the cluster at once; else one after another."""
        items = list(items)
        if self.executor is None or len(items) < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(len(items)) as pool:
            return list(pool.map(fn, items))

    def glue(self, **values) -> None:
        """Name values for the text (``{glue:text}`name```), without showing them here."""
        from myst_nb import glue
        for name, value in values.items():
            glue(name, value, display=False)

    def record(self, claim_id: str, **claim) -> Claim:
        """One claim's verdict in the ledger (`Ledger.record`)."""
        return self.ledger.record(claim_id, **claim)

    def close(self):
        """Publish the ledger (to the file the execution script names) and show it, each claim
        ID an anchor the report links to (a pandas Styler; ``.data`` is the table)."""
        if self.datasets:
            self.ledger.dataset = ", ".join(self.datasets)
        self.ledger.publish()
        return self.ledger.styled()

    def verdicts(self) -> None:
        """One line per claim, ``ID: verdict``: the output CI compares with the committed run."""
        print(self.ledger.verdicts())

    def provenance(self, dataset: str | None = None, source: str | None = None) -> pd.DataFrame:
        """Where and how the chapter ran, from which code, with which settings."""
        computed = CACHE_STATS["computed"] - self.cache_counts["computed"]
        read = CACHE_STATS["from cache"] - self.cache_counts["from cache"]
        record = provenance(
            scale=self.scale.name, device=self.device,
            dataset=dataset or ", ".join(self.datasets) or "none: this page loads no data",
            data_source=source or "; ".join(self.datasets.values()), seed=self.seed,
            started=self.started, settings=asdict(self.settings), chapter=self.name,
            extra={"runs computed / read from the cache": f"{computed} / {read}",
                   "executor": cluster.in_words(self.executor)})
        return pd.Series(record, name="provenance").to_frame()


def start(name: str, *, scale: str = "small", device: str = "auto", dataset: str | None = None,
          seed: int = 0, cache: str | None = None, load: bool = True, quiet: bool = False) -> Chapter:
    """Open chapter ``name`` from its parameters: its settings at ``scale`` (unless
    ``GRADGUESS_SCALE`` overrides it), the device, and, with ``load``, ``dataset`` cut to the
    settings' sizes as ``chapter.data``. Prints where the page runs (a ``gpu``-scale run on a
    CPU says so), unless ``quiet`` (the pages that only read the others' records)."""
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    run_scale = get_scale(scale)
    chapter = Chapter(name, run_scale, chapter_settings(name, run_scale.name),
                      resolve_device(device), seed, dataset, cache,
                      cluster.from_setting(os.environ.get("GRADGUESS_EXECUTOR"), name))
    plotting.set_style()
    pd.set_option("display.max_colwidth", None)  # a ledger's text whole, never cut to "..."
    # TF32 matmuls on a GPU only where a chapter's settings allow it (what it measures is
    # accuracy, not a cosine); provenance records the mode
    torch.backends.cuda.matmul.allow_tf32 = bool(getattr(chapter.settings, "tf32", False))
    described = f"This page ran at {run_in_words(run_scale.name, str(chapter.device))}"
    if load and dataset is not None:
        chapter.data = chapter.load(dataset)
        described += (f"; {chapter.data.name}: {len(chapter.data.train_y)} training, "
                      f"{len(chapter.data.test_y)} test images")
    if not quiet:
        print(described)
    return chapter
