"""StackedOptimizer: replicate r of a stacked run steps exactly as make_optimizer steps it alone."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradguess.core.optimizers import OPTIMIZERS, StackedOptimizer, make_optimizer
from conftest import HostReads

R, SHAPES, STEPS = 3, [(3, 5, 4), (3, 5)], 6
LR, WD = [1e-1, 1e-2, 3e-3], [0.0, 1e-2, 0.1]


def shapes(r: int = R) -> list[tuple]:
    return [(r, *shape[1:]) for shape in SHAPES]


def start(seed: int = 0, r: int = R) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes(r)]


def gradients(seed: int = 1, r: int = R) -> list[list[torch.Tensor]]:
    """STEPS steps of gradients whose scale jumps by orders of magnitude across replicates and
    steps (so StableAdamW clips some replicates at some steps and not others)."""
    g = torch.Generator().manual_seed(seed)
    scales = 10 ** (1.5 * torch.randn(STEPS, r, generator=g, dtype=torch.float64))
    return [[scales[t].view(-1, *[1] * (len(shape) - 1))
             * torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes(r)]
            for t in range(STEPS)]


def run_stacked(name, grads, lr=LR, wd=WD):
    params = [p.requires_grad_() for p in start(r=len(grads[0][0]))]
    opt = StackedOptimizer(params, name, lr, wd)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


def run_separately(name, grads, lr=LR, wd=WD):
    """Each replicate's own slices through make_optimizer (``name`` one optimizer or one per
    replicate), restacked."""
    replicates = len(grads[0][0])
    names = [name] * replicates if isinstance(name, str) else name
    finals = []
    for r in range(replicates):
        params = [p[r].clone().requires_grad_() for p in start(r=replicates)]
        opt = make_optimizer(names[r], params, lr[r], wd[r])
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g[r].clone()
            opt.step()
        finals.append([p.detach() for p in params])
    return [torch.stack(ps) for ps in zip(*finals)]


def stable_adamw_rms(grads) -> torch.Tensor:
    """optimi's clipping statistic sqrt(mean(g^2 / max(v, eps^2))), per step, parameter and
    replicate, with v its debiased second moment; lr is divided by it where it exceeds 1."""
    b2, eps, r = 0.99, 1e-6, len(grads[0][0])
    v = [torch.zeros_like(g) for g in grads[0]]
    out = torch.zeros(STEPS, len(SHAPES), r, dtype=torch.float64)
    for t, step in enumerate(grads, start=1):
        b2_hat = (b2 ** t - b2) / (b2 ** t - 1)
        for i, g in enumerate(step):
            v[i] = b2_hat * v[i] + (1 - b2_hat) * g ** 2
            out[t - 1, i] = (g ** 2 / v[i].clamp(min=eps ** 2)).reshape(r, -1).mean(1).sqrt()
    return out


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_replicate_steps_as_it_would_alone(name):
    grads = gradients()
    stacked, _ = run_stacked(name, grads)
    for got, want in zip(stacked, run_separately(name, grads)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_the_gradients_make_stable_adamw_clip_some_replicates_and_not_others():
    clipped = stable_adamw_rms(gradients()) > 1.01
    mixed = clipped.any(-1) & ~clipped.all(-1)  # steps and parameters where replicates differ
    assert mixed.any(), clipped
    assert (~clipped[1:]).any()  # and some later steps clip nothing


# every optimizer in one stack: three StableAdamW replicates (which clip at different steps),
# two of SGD with momentum, one AdamW, one SGD
MIXED = ["stable_adamw"] * 3 + ["sgd_momentum"] * 2 + ["adamw", "sgd"]
MIXED_LR = [1e-1, 1e-2, 3e-3, 1e-2, 3e-2, 1e-2, 5e-2]
MIXED_WD = [0.0, 1e-2, 0.1, 0.0, 1e-2, 0.1, 1e-2]


def test_mixed_optimizers_step_each_replicate_as_its_own_would():
    grads = gradients(seed=2, r=len(MIXED))
    clipped = stable_adamw_rms([[g[:3] for g in step] for step in grads]) > 1.01
    assert (clipped.any(-1) & ~clipped.all(-1)).any(), clipped  # per-replicate clipping matters
    stacked, opt = run_stacked(MIXED, grads, MIXED_LR, MIXED_WD)
    assert opt.segments == [("stable_adamw", 0, 3), ("sgd_momentum", 3, 5), ("adamw", 5, 6),
                            ("sgd", 6, 7)]
    for got, want in zip(stacked, run_separately(MIXED, grads, MIXED_LR, MIXED_WD)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_an_optimizer_in_several_blocks_keeps_a_state_per_block():
    """A stack's order can put one optimizer in two blocks (methods in between): each is a
    segment of its own, and every replicate still steps as its own optimizer would."""
    names = ["adamw", "stable_adamw", "adamw"]
    grads = gradients()
    stacked, opt = run_stacked(names, grads)
    assert opt.segments == [("adamw", 0, 1), ("stable_adamw", 1, 2), ("adamw", 2, 3)]
    for got, want in zip(stacked, run_separately(names, grads)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_optimizer_named_per_replicate_is_one_segment_stepped_whole(name):
    grads = gradients()
    one, opt_one = run_stacked(name, grads)
    many, opt_many = run_stacked([name] * R, grads)
    assert opt_one.segments == opt_many.segments == [(name, 0, R)]
    for a, b in zip(one, many):
        assert torch.equal(a, b)
    params = start()
    opt = StackedOptimizer(params, [name] * R, LR, WD)
    for p, g in zip(params, grads[0]):
        p.grad = g.clone()
    with CountOps() as count:
        opt.step()
    assert torch.ops.aten.slice.Tensor not in count.ops  # whole tensors, as before


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_nan_in_one_replicate_leaves_the_others_alone(name):
    grads = gradients()
    grads[2][0][0, 1, 2] = float("nan")
    stacked, _ = run_stacked(name, grads)
    separate = run_separately(name, grads)
    assert stacked[0][0].isnan().any()
    for got, want in zip(stacked, separate):
        torch.testing.assert_close(got[1:], want[1:], rtol=1e-12, atol=0)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_value_means_the_same_value_for_every_replicate(name):
    grads = gradients()
    one, _ = run_stacked(name, grads, lr=1e-2, wd=0.1)
    many, _ = run_stacked(name, grads, lr=torch.full((R,), 1e-2, dtype=torch.float64), wd=[0.1] * R)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [*OPTIMIZERS, MIXED])
def test_a_step_makes_no_host_sync(name):
    r = R if isinstance(name, str) else len(name)
    params = start(r=r)
    opt = StackedOptimizer(params, name, LR if r == R else MIXED_LR, WD if r == R else MIXED_WD)
    for step in gradients(r=r)[:2]:  # two steps: the first step and the steady state
        for p, g in zip(params, step):
            p.grad = g.clone()
        with HostReads() as count:
            opt.step()
        assert count.count == 0


def test_the_host_sync_counter_sees_a_sync():
    params = [p.requires_grad_() for p in start()]
    opt = make_optimizer("stable_adamw", params, 1e-2)  # optimi reads its RMS with .item()
    for p, g in zip(params, gradients()[0]):
        p.grad = g
    with HostReads() as count:
        opt.step()
    assert count.count > 0


def test_bad_input_is_refused():
    params = start()
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; known optimizers: adamw"):
        StackedOptimizer(params, "adam", 1e-2)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; known optimizers: adamw"):
        StackedOptimizer(params, ["adamw", "adam", "sgd"], 1e-2)
    for names in (["adamw", "sgd"], ["adamw"] * 4, []):
        with pytest.raises(ValueError, match="name needs one optimizer or 3 .one per replicate"):
            StackedOptimizer(params, names, 1e-2)
    for lr in (0.0, -1e-2, [1e-2, 0.0, 1e-2], [1e-2, float("nan"), 1e-2]):
        with pytest.raises(ValueError, match="learning rate must be > 0"):
            StackedOptimizer(params, "sgd", lr)
    with pytest.raises(ValueError, match="one per replicate"):
        StackedOptimizer(params, "sgd", [1e-2, 1e-2])
    with pytest.raises(ValueError, match="one per replicate"):
        StackedOptimizer(params, "adamw", 1e-2, [0.0] * 4)
    with pytest.raises(ValueError, match="same leading"):
        StackedOptimizer([params[0], torch.zeros(2, 5)], "sgd", 1e-2)
    with pytest.raises(ValueError, match="weight decay must be >= 0"):
        StackedOptimizer(params, "adamw", 1e-2, [0.0, -0.1, 0.0])
