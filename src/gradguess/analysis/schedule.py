"""The book on many GPUs, simulated: every chapter's workloads list-scheduled on G GPUs.

A chapter is a list of stages, run one after another; a stage is the workloads (stored calls:
a grid's stack, a training run) that may run side by side, each on one GPU for its estimated
time (`benchmarks/gpu_estimate.py`). With the Ray executor (`gradguess.book.cluster`) the
chapters run side by side too, all sharing the cluster. `simulate` list-schedules that: each
free GPU takes the waiting workload that became ready first (the longest first among those
ready at once), as a first-come cluster scheduler does. Nothing runs faster than its longest
workload (`longest_workload`), nor than its longest chain of stages (`critical_path`).
"""
import heapq


def stages_of(rows: list[dict], seconds: str = "compiled (s)") -> dict[str, list[list[float]]]:
    """{chapter: [[seconds of each workload of a stage], ...]} from `gpu_estimate`'s rows
    (each with ``chapter``, ``stage`` and ``seconds``), stages in the order they first appear."""
    chapters: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        chapters.setdefault(row["chapter"], {}).setdefault(row["stage"], []).append(row[seconds])
    return {name: list(stages.values()) for name, stages in chapters.items()}


def simulate(chapters: dict[str, list[list[float]]], gpus: int) -> float:
    """Seconds until every chapter's last stage ends, on ``gpus`` GPUs (list scheduling: the
    module's docstring). One GPU: the sum of every workload."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be an integer >= 1, got {gpus!r}")
    ready, running, order = [], [], 0  # (ready at, -seconds, order, chapter), (ends at, chapter)
    left, stage = {}, {name: 0 for name in chapters}

    def release(name: str, at: float) -> None:
        nonlocal order
        while stage[name] < len(chapters[name]) and not chapters[name][stage[name]]:
            stage[name] += 1  # an empty stage
        if stage[name] == len(chapters[name]):
            return
        left[name] = len(chapters[name][stage[name]])
        for seconds in chapters[name][stage[name]]:
            if seconds < 0:
                raise ValueError(f"{name}: a workload of {seconds} s")
            heapq.heappush(ready, (at, -seconds, order, name))
            order += 1

    for name in chapters:
        release(name, 0.0)
    now, free = 0.0, gpus
    while ready or running:
        while free and ready:
            _, negative, _, name = heapq.heappop(ready)
            heapq.heappush(running, (now - negative, name))
            free -= 1
        now, name = heapq.heappop(running)
        free += 1
        left[name] -= 1
        if left[name] == 0:
            stage[name] += 1
            release(name, now)
    return now


def longest_workload(chapters: dict[str, list[list[float]]]) -> float:
    """The longest single workload: no number of GPUs finishes sooner."""
    return max((s for stages in chapters.values() for stage in stages for s in stage), default=0.0)


def critical_path(chapters: dict[str, list[list[float]]]) -> float:
    """The longest chapter on unlimited GPUs (each stage as long as its longest workload)."""
    return max((sum(max(stage, default=0.0) for stage in stages)
                for stages in chapters.values()), default=0.0)
