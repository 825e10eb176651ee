"""The compiled step (`engine.step`): a step's draws taken outside it are the draws an eager
step takes, a compiled step of every family equals an eager one up to float rounding and
leaves the generators where an eager one leaves them, whole runs end alike, and the setting
that chooses is checked and recorded."""
import math
import statistics

import pytest
import torch

from gradguess.core.draws import Tape
from gradguess.core.guesses import ReplicateGenerators, _random
from gradguess.core.optimizers import StackedOptimizer
from gradguess.engine import grid, mixer_grid, step as engine_step
from gradguess.engine.grid import Run, train_grid
from gradguess.engine.step import Step

from conftest import blobs


def generators(n, seed=0):
    return [torch.Generator().manual_seed(seed + r) for r in range(n)]


def draws(gens, like):
    """What a step draws: stacked normal draws for replicates 0..2, a uniform one for 1..3,
    and one replicate's own."""
    return [_random(torch.randn, (3, 4, 5), ReplicateGenerators(gens[0:3]), like),
            _random(torch.rand, (3, 2), ReplicateGenerators(gens[1:4]), like),
            _random(torch.randn, (6,), gens[2], like)]


def test_a_tape_hands_a_step_the_draws_an_eager_step_takes():
    like = torch.zeros(())
    eager_gens = generators(4)
    eager = [draws(eager_gens, like) for _ in range(3)]
    tape = Tape(generators(4))
    taped = [draws(tape.stand_ins(), like)]  # recorded: drawn for real
    for _ in range(2):
        taped.append(draws(tape.replaying(tape.draw()), like))
    for a, b in zip(eager, taped):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(tape.plan) == 3
    for g, h in zip(eager_gens, tape.generators):
        assert torch.equal(g.get_state(), h.get_state())


def _compare_steps(make, steps=3, rtol=1e-4, atol=1e-6):
    """``make()`` -> (step function, optimizer, params, generators, batches); the same steps
    eager and compiled, compared after every step: loss, gradients, weights, generators."""
    results = {}
    for mode in ("off", "on"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("GRADGUESS_COMPILE", mode)
            fn, optimizer, params, gens, batches = make()
            step = Step(fn, optimizer, params, gens, "cpu")
            assert step.compiled == (mode == "on")
            seen = []
            for x, y in batches[:steps]:
                loss, bad = step(x, y)
                seen.append((loss.clone(), bad.clone(), [p.grad.clone() for p in params],
                             [p.detach().clone() for p in params]))
            results[mode] = seen, [g.get_state() for g in gens]
    (eager, eager_gens), (compiled, compiled_gens) = results["off"], results["on"]
    for (l1, b1, g1, p1), (l2, b2, g2, p2) in zip(eager, compiled):
        torch.testing.assert_close(l2, l1, rtol=rtol, atol=atol)
        assert torch.equal(b1, b2)
        for a, b in zip(g1 + p1, g2 + p2):
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    assert all(torch.equal(a, b) for a, b in zip(eager_gens, compiled_gens))


def _batches(data, R, batch, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        idx = torch.stack([torch.randperm(len(data.train_y), generator=g)[:batch]
                           for _ in range(R)])
        out.append((data.train_x.flatten(1)[idx], data.train_y[idx]))
    return out


def test_a_compiled_mlp_step_equals_an_eager_one():
    data = blobs()
    runs = [Run("w_transpose", 0, 1e-2), Run("activation_mixing", 1, 1e-2, "sgd"),
            Run("directional", 2, 1e-2, "stable_adamw", 1e-2), Run("backprop", 3, 1e-2)]

    def make():
        stack = [runs[r] for r in grid._order(runs)]
        model = grid._stacked_model(stack, data, 2, 8)
        groups, gens = grid._groups(stack), generators(len(stack), 10)
        optimizer = StackedOptimizer(model.parameters(), [r.optimizer for r in stack],
                                     [r.lr for r in stack], [r.weight_decay for r in stack])
        fn = lambda x, y, g: grid.stacked_step(model, x, y, groups, g)  # noqa: E731
        return fn, optimizer, list(model.parameters()), gens, _batches(data, len(stack), 16, 3)

    _compare_steps(make)


def test_a_compiled_localmixer_step_equals_an_eager_one():
    from gradguess.core.data import Dataset
    from gradguess.engine.mixer_grid import MixerRun

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    data = Dataset("images", x, y, x[:8], y[:8], 3, "random")
    runs = [MixerRun("w_transpose", True, False, 0), MixerRun("backprop", False, False, 1)]
    arch = dict(image_size=8, patch=4, channels=4, blocks=1, groups=2)

    def make():
        model, _ = mixer_grid._stacked_model(data, runs, arch)
        plan = mixer_grid._Plan(model, runs)
        optimizer = StackedOptimizer(model.parameters(), "adamw", 1e-2)
        batches = [(x[None, 8 * k:8 * k + 8].expand(2, -1, -1, -1, -1),
                    y[None, 8 * k:8 * k + 8].expand(2, -1)) for k in range(3)]
        return plan.step, optimizer, list(model.parameters()), generators(2, 20), batches

    _compare_steps(make)


def test_a_compiled_prompt_step_equals_an_eager_one():
    from gradguess.core.prompts import PromptedViT, estimate_stacked_prompt_gradients
    from test_prompt_stack import backbone_and_data

    backbone, data = backbone_and_data()
    methods = ["activation_perturbation", "backprop"]

    def make():
        models = []
        for seed in range(2):
            torch.manual_seed(seed)
            models.append(PromptedViT(backbone, 2, data.num_classes))
        stacked = [torch.stack([p.detach() for p in ps]).clone()
                   for ps in zip(*[(m.prompts, m.head.weight, m.head.bias) for m in models])]
        fn = lambda x, y, g: estimate_stacked_prompt_gradients(  # noqa: E731
            models[0], *stacked, x, y, methods, g)
        batches = [(data.train_x[None, 6 * k:6 * k + 6].expand(2, -1, -1, -1, -1),
                    data.train_y[None, 6 * k:6 * k + 6].expand(2, -1)) for k in range(3)]
        return fn, StackedOptimizer(stacked, "adamw", 1e-2), stacked, generators(2, 30), batches

    _compare_steps(make)


def test_compiled_runs_end_as_eager_runs_do_within_their_seed_noise(monkeypatch):
    """Three seeds of two methods for 3 epochs: each compiled run's final train accuracy is
    within 3 standard deviations over seeds of its eager run's (float rounding only)."""
    data = blobs()
    runs = [Run(m, seed, 3e-2) for m in ("w_transpose", "backprop") for seed in range(3)]
    final = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("GRADGUESS_COMPILE", mode)
        histories = train_grid(data, runs, depth=2, width=8, epochs=3, batch_size=20)
        final[mode] = [h["train_acc"][-1] for h in histories]
    for m in range(2):
        eager, compiled = final["off"][3 * m:3 * m + 3], final["on"][3 * m:3 * m + 3]
        noise = statistics.stdev(eager)
        assert all(math.isfinite(a) for a in compiled)
        assert all(abs(a - b) <= 3 * noise + 1e-9 for a, b in zip(eager, compiled)), \
            (eager, compiled, noise)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA graphs)")
def test_a_compiled_step_on_a_gpu_equals_an_eager_one(monkeypatch):
    data = blobs()
    data = type(data)(data.name, data.train_x.cuda(), data.train_y.cuda(), data.test_x.cuda(),
                      data.test_y.cuda(), data.num_classes, data.source)
    runs = [Run("w_transpose", 0, 1e-2), Run("directional", 1, 1e-2), Run("backprop", 2, 1e-2)]
    final = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("GRADGUESS_COMPILE", mode)
        histories = train_grid(data, runs, depth=2, width=8, epochs=3, batch_size=20)
        final[mode] = [h["train_loss"] for h in histories]
    for a, b in zip(final["off"], final["on"]):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)


def test_the_setting_is_checked_and_chooses_by_device(monkeypatch):
    monkeypatch.setenv("GRADGUESS_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="GRADGUESS_COMPILE must be one of auto, on, off"):
        engine_step.setting()
    monkeypatch.delenv("GRADGUESS_COMPILE")
    assert engine_step.setting() == "auto"
    assert not engine_step.compiles("cpu") and engine_step.compiles("cuda")
    monkeypatch.setenv("GRADGUESS_COMPILE", "on")
    assert engine_step.compiles("cpu") and engine_step.compiles(torch.device("cpu"))
    monkeypatch.setenv("GRADGUESS_COMPILE", "off")
    assert not engine_step.compiles("cuda")


def test_the_store_and_the_provenance_record_whether_steps_ran_compiled(monkeypatch):
    from gradguess.book.provenance import provenance
    from gradguess.book.store import call_key

    data, runs = blobs(), [Run("w_transpose", 0)]
    keys, rows = {}, {}
    for mode in ("off", "on"):
        monkeypatch.setenv("GRADGUESS_COMPILE", mode)
        keys[mode] = call_key(train_grid, (data, runs), {"depth": 2, "width": 8, "epochs": 1})
        rows[mode] = provenance(scale="small", device=torch.device("cpu"), dataset="blobs",
                                data_source="", seed=0, started=0.0)["compiled step"]
    assert (keys["off"]["step"], keys["on"]["step"]) == ("eager", "compiled")
    assert rows["off"].startswith("no, eager") and rows["on"].startswith("yes, torch.compile")
