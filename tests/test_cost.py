"""The cost measurements measure what they say (no timing is asserted)."""
import torch

from gradguess.analysis.cost import (matmul_units, median_times, peak_memories, peak_step_memory,
                            replicate_throughput, step_function, step_times)
from gradguess.core.models import MLP

from conftest import blobs


def test_peak_memory_counts_what_a_step_allocates_and_frees():
    def step():
        a = torch.empty(1000, 250)      # 1,000,000 bytes
        b = a.t()                       # a view: no new memory
        c = torch.empty(500, 250)       # 500,000 bytes, while a is alive
        del a, b, c
        torch.empty(100, 250)           # 100,000 bytes after both are gone
    assert peak_step_memory(step) == 1_500_000
    batch = torch.empty(10, 10)
    assert peak_step_memory(step, inputs=(batch,)) == 1_500_400


def test_backprop_memory_grows_with_depth_and_lean_mode_does_not():
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    peaks = {}
    for depth in [3, 9]:
        torch.manual_seed(0)
        model = MLP(32, 256, depth, 4)
        g = torch.Generator().manual_seed(0)
        for estimator in ["backprop", "fused-lean"]:
            method = "backprop" if estimator == "backprop" else "w_transpose"
            step = step_function(model, x, y, method, estimator, g)
            step()  # gradient buffers exist, as in training
            peaks[estimator, depth] = peak_step_memory(step, (x,))
    assert peaks["backprop", 9] > 1.5 * peaks["backprop", 3]  # activations saved per layer
    assert peaks["fused-lean", 9] <= 1.3 * peaks["fused-lean", 3]


def test_median_times_and_replicates_run():
    calls = []
    times = median_times({"a": lambda: calls.append(1), "b": lambda: None}, repeats=3)
    assert set(times) == {"a", "b"} and len(calls) == 4  # one warm-up, three timed
    result = replicate_throughput(blobs(), replicates=2, steps=3, depth=3, width=8, batch_size=20)
    assert result["sequential"] > 0 and result["side_by_side"] > 0
    units = matmul_units()
    assert units["w_transpose", "fused"] / units["backprop", "exact"] <= 4 / 3
    assert units["w_transpose", "reference"] > units["w_transpose", "fused"]


def test_step_times_and_peak_memories_cover_every_variant_and_depth():
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    variants = [("backprop", "exact"), ("w_transpose", "fused"), ("w_transpose", "fused-lean")]
    seconds = step_times(x, y, variants, (2, 3), width=8, repeats=2, classes=3)
    peaks = peak_memories(x, y, variants, (2, 3), width=8, classes=3)
    assert set(seconds) == set(peaks) == {(v, d) for v in variants for d in (2, 3)}
    assert all(s > 0 for s in seconds.values())
    assert all(p > x.untyped_storage().nbytes() for p in peaks.values())  # the batch and more
