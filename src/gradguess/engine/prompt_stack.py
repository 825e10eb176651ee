"""Prompt-tuning runs side by side: R (method, seed) runs on one frozen ViT backbone, as the
replicates of the stacked engine (`stack`), each, up to float rounding, the run
`training.reference_prompts` makes alone (tests check this in float64).

The runs' prompts [R, P, D] and heads [R, C, D], [R, C] are stacked: a step is one backbone
pass per kind of method over all its runs' examples, R * B at most
(`prompts.estimate_stacked_prompt_gradients`), and one `StackedOptimizer` step, which moves
every run as its own optimizer would (elementwise; StableAdamW's clipping is pooled per run).
Losses stay on the device until an observation (or the end) reads them once, which is also
when divergence is seen. Observations loop over the runs, each as its own `PromptedViT`.
"""
import math
from dataclasses import dataclass

import torch

from ..core.methods import get_method
from ..core.optimizers import StackedOptimizer
from . import seeds, stack as engine
from .stack import Job


@dataclass(frozen=True)
class _PromptRun:
    method: str
    seed: int


def tune_prompt_stack(backbone, data, methods_and_seeds, *, prompts: int, steps: int,
                      eval_every: int, batch_size: int = 64, lr: float = 1e-2,
                      optimizer: str = "adamw", cosine_repeats: int = 4,
                      progress: bool = False) -> list[dict]:
    """`tune_prompts` for R (method, seed) runs on one frozen ``backbone`` and one ``data``,
    side by side: one history per run, in the order of ``methods_and_seeds``, each the one
    `tune_prompts(backbone, data, method, prompts=..., seed=seed, steps=..., ...)` returns
    for that run alone (same keys, same values up to float rounding), but ``seconds``: the
    stack's wall time.

    Run r is initialised as `tune_prompts` initialises it (``torch.manual_seed(seed)``, then a
    `PromptedViT`), draws its batches, guesses and cosine probes from its own generators
    (`seeds`), and is observed at step 0 and every ``eval_every`` steps. A run whose loss
    turns non-finite stops recording there (``diverged``), as its single run stops; the
    others go on (its rows are still computed, their NaNs kept to themselves, until every run
    has diverged). The run is checkpointed at every observation (`checkpoints`).
    """
    from ..core.prompts import estimate_stacked_prompt_gradients  # torchvision, only here

    runs = _checked(methods_and_seeds, steps, eval_every, cosine_repeats)
    engine.check_batch_size(batch_size, len(data.train_y))
    order = engine.stack_order(runs)
    stack = [runs[r] for r in order]
    models = _models(backbone, data, stack, prompts)
    # prompts [R, P, D], head weights [R, C, D] and biases [R, C]: what the stack trains
    stacked = [torch.stack([p.detach() for p in ps]).clone()
               for ps in zip(*[(m.prompts, m.head.weight, m.head.bias) for m in models])]
    device, methods = data.train_x.device, [run.method for run in stack]
    guesses = [seeds.guesses(run.seed, device) for run in stack]
    probes = [seeds.prompt_probes(run.seed, device) for run in stack]
    observer = _Observer(models, stacked, data, batch_size, methods, probes, cosine_repeats)
    job = Job(stack, order, stacked, StackedOptimizer(stacked, optimizer, lr),
              step=lambda x, y, generators: estimate_stacked_prompt_gradients(
                  models[0], *stacked, x, y, methods, generators),
              record=_record, observe=observer.observe,
              histories=[{"step": [], "test_acc": [], "cosine": [], "train_loss": [],
                          "diverged": False} for _ in stack],
              train_x=data.train_x, train_y=data.train_y, batch_size=batch_size, steps=steps,
              every=eval_every, generators={"guesses": guesses, "probes": probes},
              key=repr(("prompts", data.name, stack, prompts, steps, eval_every, batch_size,
                        lr, optimizer, cosine_repeats)))
    return engine.run(job, progress=progress, desc=f"prompts x{len(stack)}")


def _checked(runs, steps, eval_every, cosine_repeats) -> list[_PromptRun]:
    from ..core.prompts import PROMPT_METHODS  # torchvision, only here

    runs = list(runs)
    if not runs:
        raise ValueError("tune_prompt_stack needs at least one (method, seed) run")
    for run in runs:
        if not (isinstance(run, (tuple, list)) and len(run) == 2 and isinstance(run[0], str)
                and isinstance(run[1], int) and not isinstance(run[1], bool)):
            raise ValueError(f"each run is a (method, seed) pair, a name and an integer; "
                             f"got {run!r}")
        if run[0] not in PROMPT_METHODS:
            raise ValueError(f"unknown prompt method {run[0]!r}; known: "
                             f"{', '.join(PROMPT_METHODS)}")
    if not isinstance(steps, int) or steps < 1 or not isinstance(eval_every, int) \
            or eval_every < 1:
        raise ValueError(f"steps and eval_every must be integers >= 1, got {steps!r}, "
                         f"{eval_every!r}")
    if not isinstance(cosine_repeats, int) or cosine_repeats < 1:
        raise ValueError(f"cosine_repeats must be an integer >= 1, got {cosine_repeats!r}")
    return [_PromptRun(*run) for run in runs]


def _models(backbone, data, stack, prompts: int) -> list:
    """One `PromptedViT` per run, as `tune_prompts` builds it: its initialisation, and the
    model its observations run on."""
    from ..core.prompts import PromptedViT  # torchvision, only here

    models = []
    for run in stack:
        torch.manual_seed(run.seed)
        models.append(PromptedViT(backbone, prompts, data.num_classes).to(data.train_x.device))
    return models


def _record(histories, t: engine.Tracker) -> list[int]:
    """The losses since the last read, [steps][R], read back once; a run whose loss turned
    non-finite stops at that step, as its single run stops. Returns the runs still going."""
    for column, history in zip(zip(*torch.stack(t.losses).tolist()), histories):
        for value in column if not history["diverged"] else ():
            if not math.isfinite(value):
                history["diverged"] = True
                break
            history["train_loss"].append(value)
    return [r for r, history in enumerate(histories) if not history["diverged"]]


class _Observer:
    """As `train_prompts` observes a run: the test accuracy and the cosine of the method's
    guess with the true prompt gradient on a fixed training batch, run by run, each as its
    own `PromptedViT` at the stack's values."""

    def __init__(self, models, stacked, data, batch_size, methods, rngs, repeats):
        self.models, self.stacked, self.data, self.methods = models, stacked, data, methods
        self.fixed = data.train_x[:batch_size], data.train_y[:batch_size]
        self.rngs, self.repeats = rngs, repeats

    def observe(self, histories, going, step: int) -> None:
        from ..core.prompts import prompt_cosine  # torchvision, only here

        for r in going:
            model, history, data = self.models[r], histories[r], self.data
            with torch.no_grad():
                for p, rows in zip((model.prompts, model.head.weight, model.head.bias),
                                   self.stacked):
                    p.copy_(rows[r])
            space = get_method(self.methods[r]).space  # backprop's cosine is 1, the baseline's 0
            history["step"].append(step)
            history["test_acc"].append(engine.accuracy(model, data.test_x, data.test_y, 512))
            history["cosine"].append(1.0 if space == "exact" else 0.0 if space == "none" else
                                     prompt_cosine(model, *self.fixed, self.methods[r],
                                                   self.rngs[r], self.repeats))
