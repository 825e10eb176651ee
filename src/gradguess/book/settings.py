"""Every number a chapter runs with, for every scale, in one place: one frozen dataclass per
chapter, one instance per scale. A chapter reads its settings through `gradguess.book.chapter.start`
and its provenance records all of them. Adding a scale adds one instance per chapter here.

Sizes of ``None`` mean "all of it" (the whole training or test set).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class ArchitectureSettings:
    """Fig. 1 and the poster's table: guesses scored along a backprop trajectory."""
    train_size: int | None
    test_size: int | None
    steps: int  # backprop steps along which every guess is scored
    dim_widths: tuple[int, ...]  # widths of the 3-layer MLPs of the 1/sqrt(N) measurement
    dim_guesses: int  # directional guesses per width
    depth: int = 6
    width: int = 1024
    batch_size: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class TrainingSettings:
    """Table 1, Fig. 2 and the Fig. 8 sweep."""
    train_size: int | None
    test_size: int | None
    architectures: tuple[tuple[int, int], ...]  # (depth, width) of Table 1's MLPs
    epochs: int
    seeds: int
    sweep_width: int
    sweep_epochs: int
    learning_rates: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)
    batch_size: int = 128
    tf32: bool = True  # on a GPU: accuracies only, which TF32's rounding moves within seed noise
    sweep_seeds: int = 2  # F8's compared settings, again at their chosen learning rate


@dataclass(frozen=True)
class Table1RowSettings:
    """Table 1's MNIST 3x128 row, the one cell the book shares with the paper, at its plateau."""
    train_size: int | None
    test_size: int | None
    epochs: int
    seeds: int
    learning_rates: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5)
    batch_size: int = 128
    depth: int = 3
    width: int = 128
    tf32: bool = True  # on a GPU: accuracies only


@dataclass(frozen=True)
class FeaturesSettings:
    """Fig. 6 and activation mixing's subspace (§2.2)."""
    train_size: int | None
    width: int
    depths: tuple[int, ...]
    epochs: int
    reference: int  # activations whose principal components span the subspace
    evaluation: int  # examples whose gradients are projected onto it
    per_class: int  # images per class for the principal components of Fig. 6
    pc_epochs: int
    lr: float = 1e-3


@dataclass(frozen=True)
class BiasSettings:
    """A.1, Figs. 3 and 5."""
    train_size: int | None
    test_size: int | None
    width: int
    samples: int  # Monte Carlo guesses per expectation
    max_guesses: int  # K of Fig. 3's averages
    epochs: int
    trained_epochs: int
    downstream_width: int
    seeds: int
    learning_rates: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    batch_size: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class SelfSharpeningSettings:
    """Table 1's self-sharpening row and Fig. 4."""
    train_size: int | None
    test_size: int | None
    depth: int
    width: int
    epochs: int
    seeds: int
    probe: int  # probe batch size
    methods: tuple[str, ...]
    powers: tuple[float, ...]  # p of Fig. 4
    replicates: int  # per p
    steps: int  # Fig. 4's iterations
    svd_lr: float
    record_every: int
    svd_every: int  # SVD refresh cadence, in steps
    probe_guesses: int = 4
    svd_width: int = 128
    svd_depth: int = 6
    batch_size: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class LocalMixerSettings:
    """The poster's LocalMixer table."""
    train_size: int | None
    test_size: int | None
    epochs: int
    channels: int
    blocks: int
    groups: int
    patch: int = 4
    image_size: int = 32
    batch_size: int = 128
    lr: float = 1e-2  # Adam for every method: the book's choice, from a sweep this book does not record
    tf32: bool = True  # on a GPU: accuracies only, which TF32's rounding moves within seed noise
    side_by_side: bool = True  # the runs as one stack (`mixer_grid`); a 2-core CPU is faster without


@dataclass(frozen=True)
class PromptTuningSettings:
    """Fig. 9: visual prompt tuning."""
    pretrain_size: int | None
    pretrain_epochs: int
    train_size: int | None
    test_size: int | None
    steps: int
    eval_every: int
    prompts: int
    seeds: int
    batch_size: int = 64
    lr: float = 1e-2
    pretrain_lr: float = 1e-3
    cosine_repeats: int = 2


@dataclass(frozen=True)
class CostSettings:
    """Step time, peak memory and replicates side by side."""
    depths: tuple[int, ...]
    repeats: int
    replicates: int
    replicate_steps: int
    width: int = 1024
    batch_size: int = 128


@dataclass(frozen=True)
class NoSettings:
    """Pages that compute nothing of their own (introduction, report, status)."""


SETTINGS = {
    "architecture": {
        "small": ArchitectureSettings(train_size=6000, test_size=2000, steps=20,
                                      dim_widths=(8, 16, 32, 64, 128, 256, 512, 1024),
                                      dim_guesses=32),
        "gpu": ArchitectureSettings(train_size=None, test_size=None, steps=50,
                                    dim_widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                                    dim_guesses=64),
        "paper": ArchitectureSettings(train_size=None, test_size=None, steps=200,
                                      dim_widths=(8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                                      dim_guesses=128),
    },
    "training": {
        "small": TrainingSettings(train_size=8000, test_size=2000,
                                  architectures=((3, 64), (6, 64), (3, 256), (6, 256)), epochs=5,
                                  seeds=4, sweep_width=128, sweep_epochs=5, sweep_seeds=4),
        "gpu": TrainingSettings(train_size=None, test_size=None,
                                architectures=((3, 128), (6, 128), (3, 1024), (6, 1024)), epochs=5,
                                seeds=3, sweep_width=128, sweep_epochs=5, sweep_seeds=3),
        "paper": TrainingSettings(train_size=None, test_size=None,
                                  architectures=((3, 128), (6, 128), (3, 1024), (6, 1024)),
                                  epochs=1000, seeds=3, sweep_width=128, sweep_epochs=1000, sweep_seeds=3),
    },
    "table1_row": {
        "small": Table1RowSettings(train_size=8000, test_size=2000, epochs=5, seeds=2,
                                   learning_rates=(1e-2, 1e-3, 1e-4)),
        "gpu": Table1RowSettings(train_size=None, test_size=None, epochs=60, seeds=3),
        "paper": Table1RowSettings(train_size=None, test_size=None, epochs=1000, seeds=3),
    },
    "features": {
        "small": FeaturesSettings(train_size=8000, width=256, depths=(3, 4, 6), epochs=3,
                                  reference=512, evaluation=256, per_class=200, pc_epochs=2),
        "gpu": FeaturesSettings(train_size=None, width=1024, depths=(3, 4, 6), epochs=3,
                                reference=2048, evaluation=1024, per_class=1000, pc_epochs=3),
        "paper": FeaturesSettings(train_size=None, width=1024, depths=(3, 4, 6), epochs=20,
                                  reference=2048, evaluation=1024, per_class=1000, pc_epochs=20),
    },
    "bias": {
        "small": BiasSettings(train_size=8000, test_size=2000, width=128, samples=20000,
                              max_guesses=10000, epochs=5, trained_epochs=3, downstream_width=256,
                              seeds=4),
        "gpu": BiasSettings(train_size=None, test_size=None, width=256, samples=50000,
                            max_guesses=10000, epochs=3, trained_epochs=3, downstream_width=1024,
                            seeds=3),
        "paper": BiasSettings(train_size=None, test_size=None, width=1024, samples=100000,
                              max_guesses=10000, epochs=50, trained_epochs=20,
                              downstream_width=1024, seeds=3),
    },
    "self_sharpening": {
        "small": SelfSharpeningSettings(
            train_size=2048, test_size=2000, depth=6, width=256, epochs=60, seeds=2, probe=256,
            methods=("self_sharpening", "downstream", "backprop"), powers=(0.1, 0.5, 1, 2, 4),
            replicates=2, steps=600, svd_lr=1e-3, record_every=25, svd_every=10),
        "gpu": SelfSharpeningSettings(
            train_size=None, test_size=None, depth=6, width=1024, epochs=5, seeds=3, probe=1024,
            methods=("self_sharpening", "downstream", "w_transpose", "backprop"),
            powers=(0.1, 0.5, 1, 2, 4), replicates=8, steps=5000, svd_lr=1e-4, record_every=250,
            svd_every=10),
        "paper": SelfSharpeningSettings(
            train_size=None, test_size=None, depth=6, width=1024, epochs=50, seeds=3, probe=1024,
            methods=("self_sharpening", "downstream", "w_transpose", "backprop"),
            powers=(0.1, 0.2, 0.5, 1, 2, 3, 4), replicates=64, steps=50000, svd_lr=1e-4,
            record_every=1000, svd_every=1),
    },
    "localmixer": {
        "small": LocalMixerSettings(train_size=8000, test_size=2000, epochs=3, channels=32,
                                    blocks=2, groups=4, side_by_side=False),
        "gpu": LocalMixerSettings(train_size=None, test_size=None, epochs=2, channels=64,
                                  blocks=4, groups=8),
        "paper": LocalMixerSettings(train_size=None, test_size=None, epochs=100, channels=256,
                                    blocks=4, groups=8),
    },
    "prompt_tuning": {
        "small": PromptTuningSettings(pretrain_size=20000, pretrain_epochs=3, train_size=10000,
                                      test_size=1000, steps=300, eval_every=50, prompts=5,
                                      seeds=1),
        "gpu": PromptTuningSettings(pretrain_size=None, pretrain_epochs=5, train_size=None,
                                    test_size=None, steps=1000, eval_every=100, prompts=10,
                                    seeds=3),
        "paper": PromptTuningSettings(pretrain_size=None, pretrain_epochs=10, train_size=None,
                                      test_size=None, steps=2000, eval_every=200, prompts=10,
                                      seeds=3),
    },
    "cost": {
        "small": CostSettings(depths=(3, 6, 9, 12), repeats=5, replicates=8, replicate_steps=20),
        "gpu": CostSettings(depths=(3, 6, 9, 12), repeats=10, replicates=64, replicate_steps=50),
        "paper": CostSettings(depths=(3, 6, 9, 12), repeats=20, replicates=64,
                              replicate_steps=100),
    },
}


def chapter_settings(chapter: str, scale: str):
    """The settings of ``chapter`` at ``scale`` (a chapter with none: `NoSettings`)."""
    if chapter not in SETTINGS:
        return NoSettings()
    by_scale = SETTINGS[chapter]
    if scale not in by_scale:
        raise ValueError(f"chapter {chapter!r} has no settings for scale {scale!r}; it has "
                         f"{', '.join(by_scale)}")
    return by_scale[scale]
