"""Execute book chapters with papermill, keeping each scale's runs apart.

    python scripts/execute.py architecture --scale small --device auto
    python scripts/execute.py --all --scale paper --device cuda

A chapter's source (book/chapters/<name>.md, MyST markdown) is executed with its parameters
into book/runs/<scale>/<name>.ipynb, its claims ledger beside it. The copy the book renders,
book/executed/<name>.ipynb (committed), is replaced only by a run at the same or a larger
scale: a quick CPU run never silently replaces a paper-scale GPU run.

At a scale other than small, every run a chapter stores (`gradguess.book.store`) whose result
is plain JSON is also written as a readable record into book/runs/<scale>/records/ of this
checkout, one file per call (function, arguments, the code it reached, commit, device, torch,
wall time, result). The records are committed with the executed notebooks: anyone can read the
numbers without torch, and a later execution at that scale, here or on another machine, reads
them instead of computing the runs again. Small-scale runs stay in the local run cache only.

CI re-executes every chapter at small scale and compares its verdicts with a committed
small-scale execution: the rendered copy where that is small-scale, else
book/executed/small/<name>.ipynb, kept (committed) for as long as a larger run is rendered.

    python scripts/execute.py --small-executions   # the notebooks CI re-executes
    python scripts/execute.py --all --scale gpu --promote-only   # runs executed elsewhere (a GPU
                                                    # machine's book/runs/gpu/, unpacked here)

With ``--executor ray`` (or ``ray:ADDRESS``, a running cluster's), every call the run store
misses is computed as a Ray task with one GPU, and a grid's chunks each as one
(`gradguess.book.cluster`). Several chapters run side by side, one process each, sharing one
cluster, and the pages that read the others' records run after them. Ray is the optional extra ``pip install -e '.[cluster]'``.

    python scripts/execute.py --all --scale paper --device cuda --executor ray:auto

Every file is written whole (`gradguess.engine.files`): a full disk leaves the previous
notebook and ledger as they were. Two executions of one chapter at one scale (two terminals)
take turns: the second waits for the first, then reads its runs from the store. A chapter
that fails ends with one line, its error, and the notebook that shows the traceback.
"""
import argparse
import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
import papermill

from gradguess.book import cluster
from gradguess.book.scales import SCALES
from gradguess.engine import files

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "book" / "chapters"
RUNS = ROOT / "book" / "runs"
EXECUTED = ROOT / "book" / "executed"
SCALE_RANK = {name: rank for rank, name in enumerate(SCALES)}  # small < gpu < paper


# pages that read the other chapters' records: executed after them, in this order (the status
# page reads the intro's and the report's records too)
READERS = ("intro", "report", "status")


def _order(name: str) -> tuple:
    return (READERS.index(name) + 1 if name in READERS else 0, name)


def chapters() -> list[str]:
    return sorted((p.stem for p in SOURCES.glob("*.md")), key=_order)


def executed_scale(notebook: Path) -> str | None:
    if not notebook.exists():
        return None
    meta = nbformat.read(notebook, as_version=4).metadata.get("papermill", {})
    return meta.get("parameters", {}).get("scale")


def records_folder(scale: str) -> Path:
    """Where the runs of an execution at ``scale`` (not small) are committed as records."""
    return RUNS / scale / "records"


def lock(chapter: str, scale: str):
    """The lock an execution of ``chapter`` at ``scale`` holds, from executing to promoting."""
    return files.locked(RUNS / scale / f".{chapter}.lock",
                        waiting=f"{chapter}: another execution at {scale} scale is running; "
                                "waiting for it to finish")


def store_lines(notebook: Path) -> list[str]:
    """What the run store said while the chapter ran (a damaged record set aside, a wait for
    another process): its lines on the cells' stderr, shown again in the terminal."""
    nb = nbformat.read(notebook, as_version=4)
    return [line for cell in nb.cells for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" and out.get("name") == "stderr"
            for line in out.get("text", "").splitlines() if line.startswith("run store:")]


def execute(chapter: str, scale: str, device: str, dataset: str | None, seed: int) -> Path:
    if os.environ.get("GRADGUESS_SCALE", scale) != scale:
        sys.exit(f"GRADGUESS_SCALE={os.environ['GRADGUESS_SCALE']} would override --scale {scale}; unset it")
    run_dir = RUNS / scale
    run_dir.mkdir(parents=True, exist_ok=True)
    out, ledger = run_dir / f"{chapter}.ipynb", run_dir / f"{chapter}.ledger.json"
    parameters = {"scale": scale, "device": device, "seed": seed}
    if dataset:
        parameters["dataset"] = dataset
    if scale == "small":  # small-scale runs are not committed
        os.environ.pop("GRADGUESS_RECORDS", None)
    else:
        os.environ["GRADGUESS_RECORDS"] = str(records_folder(scale))
    with tempfile.TemporaryDirectory() as tmp:
        # the notebook and ledger are written in a folder of this execution's own, then
        # put in place whole: an execution that fails or is stopped leaves the previous ones
        source, executed = Path(tmp) / f"{chapter}.ipynb", Path(tmp) / "executed.ipynb"
        os.environ["GRADGUESS_LEDGER"] = str(Path(tmp) / "ledger.json")
        nbformat.write(jupytext.read(SOURCES / f"{chapter}.md"), source)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(source, executed, parameters=parameters, cwd=str(ROOT),
                                       kernel_name="python3", progress_bar=False)
        except papermill.PapermillExecutionError as error:
            failed = run_dir / f"{chapter}.failed.ipynb"
            for line in store_lines(executed):
                print(f"{chapter}: {line}", file=sys.stderr)
            files.copy_atomically(executed, failed)
            sys.exit(f"{chapter}: {error.ename}: {error.evalue}\n"
                     f"(the traceback: {failed.relative_to(ROOT)})")
        if Path(os.environ["GRADGUESS_LEDGER"]).exists():
            files.copy_atomically(os.environ["GRADGUESS_LEDGER"], ledger)
        else:
            ledger.unlink(missing_ok=True)
        files.copy_atomically(executed, out)
        for line in store_lines(executed):
            print(f"{chapter}: {line}", file=sys.stderr)
    print(f"{chapter}: executed at {scale} scale in {time.perf_counter() - start:.0f} s -> "
          f"{out.relative_to(ROOT)}")
    merge_parameters(out)
    return out


def merge_parameters(notebook: Path) -> None:
    """Show one parameters cell, not two: the values papermill injected replace the defaults
    in the chapter's own cell (its comments kept), and the injected cell goes. What the page
    shows is what ran; the notebook's papermill metadata keeps the injected values too."""
    nb = nbformat.read(notebook, as_version=4)
    tagged = lambda tag: [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    own, injected = tagged("parameters"), tagged("injected-parameters")
    if len(own) != 1 or len(injected) != 1:
        return
    values = nb.metadata["papermill"]["parameters"]
    lines = own[0].source.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(\w+)(\s*=\s*)(.*?)(\s*#.*)?$", line)
        if match and match[1] in values:
            value = repr(values[match[1]]).replace("'", '"')
            comment = match[4] or ""
            width = len(match[3]) + len(comment) - len(comment.lstrip())  # keep comments aligned
            lines[i] = match[1] + match[2] + (value.ljust(width) + comment.lstrip() if comment else value)
    own[0].source = "\n".join(lines)
    nb.cells.remove(injected[0])
    text = nbformat.writes(nb)
    files.write_atomically(notebook, text if text.endswith("\n") else text + "\n")


def small_copy(chapter: str) -> Path:
    """Where a chapter's small-scale execution is kept while a larger one is rendered."""
    return EXECUTED / "small" / f"{chapter}.ipynb"


def promote(chapter: str, scale: str) -> None:
    """Make this scale's run the rendered one, unless a larger-scale run is rendered now; keep
    the small-scale execution that CI compares with (`small_executions`)."""
    merge_parameters(RUNS / scale / f"{chapter}.ipynb")  # runs executed elsewhere, too
    rendered = EXECUTED / f"{chapter}.ipynb"
    current = executed_scale(rendered)
    if current is not None and SCALE_RANK.get(current, -1) > SCALE_RANK[scale]:
        if scale == "small":
            files.copy_atomically(RUNS / scale / f"{chapter}.ipynb", small_copy(chapter))
        print(f"{chapter}: kept the rendered {current}-scale run; the {scale}-scale run stays in "
              f"book/runs/{scale}/" + (" and book/executed/small/" if scale == "small" else ""))
        return
    EXECUTED.mkdir(parents=True, exist_ok=True)
    if scale == "small":
        small_copy(chapter).unlink(missing_ok=True)  # the rendered copy is the small one now
    elif current == "small":  # a larger run takes the page: the small one stays for CI
        files.copy_atomically(rendered, small_copy(chapter))
    files.copy_atomically(RUNS / scale / f"{chapter}.ipynb", rendered)
    ledger = RUNS / scale / f"{chapter}.ledger.json"
    rendered_ledger = EXECUTED / f"{chapter}.ledger.json"
    if ledger.exists():
        json.loads(ledger.read_text())  # a whole file, not a torn one
        files.copy_atomically(ledger, rendered_ledger)
    else:
        rendered_ledger.unlink(missing_ok=True)
    print(f"{chapter}: rendered copy is now the {scale}-scale run")


def duration(notebook: Path) -> float:
    """How long the execution of ``notebook`` took (papermill's record; 0 if none)."""
    return nbformat.read(notebook, as_version=4).metadata.get("papermill", {}).get("duration") or 0


def small_executions() -> list[Path]:
    """The committed small-scale execution of every chapter that has one: what CI re-executes,
    the longest first (by their recorded durations), so that workers re-executing them side by
    side (`make validate`) start with the long ones and finish together."""
    found = []
    for name in chapters():
        rendered = EXECUTED / f"{name}.ipynb"
        if small_copy(name).exists():
            found.append(small_copy(name))
        elif executed_scale(rendered) == "small":
            found.append(rendered)
    return sorted(found, key=duration, reverse=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help=f"chapter names: {', '.join(chapters())}")
    parser.add_argument("--all", action="store_true", help="every chapter")
    parser.add_argument("--scale", default="small", choices=list(SCALES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", default=None, help="default: each chapter's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                        help="compile the stacks' steps (sets GRADGUESS_COMPILE; default auto: "
                             "on a GPU, not on a CPU)")
    parser.add_argument("--executor", default=os.environ.get("GRADGUESS_EXECUTOR"),
                        help="where the calls the run store misses are computed (default: "
                             "$GRADGUESS_EXECUTOR, else local): "
                             "local, ray (the cluster RAY_ADDRESS names, else a new "
                             "one on this machine) or ray:ADDRESS (a running cluster); with Ray "
                             "the chapters run side by side, sharing the cluster")
    parser.add_argument("--small-executions", action="store_true",
                        help="print the committed small-scale executions (what CI re-executes)")
    parser.add_argument("--promote-only", action="store_true",
                        help="execute nothing: promote the runs already in book/runs/<scale>/")
    args = parser.parse_args()
    if args.small_executions:
        print(" ".join(str(path.relative_to(ROOT)) for path in small_executions()))
        return
    if args.compile:
        os.environ["GRADGUESS_COMPILE"] = args.compile
    names = chapters() if args.all else args.chapters
    unknown = sorted(set(names) - set(chapters()))
    if unknown or not names:
        parser.error(f"name chapters from {', '.join(chapters())}, or pass --all"
                     + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    if args.promote_only:
        names = [n for n in names if (RUNS / args.scale / f"{n}.ipynb").exists()]
        if not names:
            parser.error(f"no runs in book/runs/{args.scale}/ to promote")
    if args.executor:
        try:
            kind, address = cluster.parse(args.executor)
            if kind == "ray":
                cluster.require_ray()
        except cluster.ClusterError as error:
            parser.error(str(error))
        os.environ["GRADGUESS_EXECUTOR"] = args.executor
        if kind == "ray" and not args.promote_only:
            # this process joins (or starts) the cluster and keeps it: the chapters' kernels
            # join it by its address, and leave it quickly when they end
            ray = cluster.connect(address)
            os.environ["GRADGUESS_EXECUTOR"] = f"ray:{ray.get_runtime_context().gcs_address}"
            print(f"executor: {cluster.in_words(cluster.RayExecutor(address))}")
            writers = [n for n in names if n not in READERS]
            if len(writers) > 1:
                side_by_side(writers, args)
                names = [n for n in names if n in READERS]
    for name in sorted(names, key=_order):  # readers last
        try:
            with lock(name, args.scale):
                if not args.promote_only:
                    execute(name, args.scale, args.device, args.dataset, args.seed)
                promote(name, args.scale)
        except OSError as error:  # a full disk, a read-only or foreign folder: one line
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            sys.exit(f"{name}: {error}")


def side_by_side(chapters: list[str], args) -> None:
    """Execute ``chapters`` as processes side by side (this script, one chapter each), all
    joined to the cluster ``GRADGUESS_EXECUTOR`` names. Where there are several GPUs, each
    process's own work (what is not a task on the cluster) runs on a GPU of its own. Exits
    naming the chapters that failed."""
    import torch
    gpus = torch.cuda.device_count() if "CUDA_VISIBLE_DEVICES" not in os.environ else 0
    options = ["--scale", args.scale, "--device", args.device, "--seed", str(args.seed)]
    options += ["--dataset", args.dataset] if args.dataset else []
    options += ["--compile", args.compile] if args.compile else []
    print(f"executing {', '.join(chapters)} side by side")
    processes = {}
    for i, name in enumerate(chapters):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i % gpus)) if gpus > 1 else None
        processes[name] = subprocess.Popen([sys.executable, __file__, name, *options], env=env)
    failed = [name for name, process in processes.items() if process.wait() != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (each said why above)")


if __name__ == "__main__":
    main()
