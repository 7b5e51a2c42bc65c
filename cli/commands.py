"""How each CLI command shows the interface layer's work (gencc/api.py): progress bars and result lines.

The work itself (checks, training, sampling, shards, descriptions) happens in the layer; here it is only
drawn and printed, and Ctrl-C is turned into the line that says how to continue.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from gencc.api import save_npz, write_png  # noqa: F401 (the demo and its tests use them from here)


def _losses_text(losses: dict) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in losses.items())


def _progress_bar():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]train {task.fields[model]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, transient=False)


class TrainBars:
    """One progress bar per training stage, shown only once a stage starts (torchrun's ranks other than 0
    report none, so they show none), and closed before the result is printed."""

    def __init__(self):
        self.bars = None

    def stage(self, name: str, total: int):
        if self.bars is None:
            self.bars = _progress_bar()
            self.bars.start()
        bars = self.bars
        task = bars.add_task(name, total=total, model=name, losses="")

        def progress(step: int, total: int, losses: dict) -> None:
            if step % 20 == 0 or step == total:
                bars.update(task, completed=step, losses=_losses_text(losses))
        return progress

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_command(request) -> None:
    import gencc

    with TrainBars() as bars:
        def done(outcome) -> None:
            bars.close()
            _report_training(outcome)
        gencc.train(request, on_stage=bars.stage, on_done=done)


def _report_training(outcome) -> None:
    req, result = outcome.request, outcome.result
    if not outcome.reporting:
        return
    if req.model == "latent-diffusion":
        ae = outcome.autoencoder
        ae_text = f"autoencoder step {ae.steps}, {ae.seconds:.1f} s" if ae else \
            f"autoencoder copied from {req.autoencoder}" if req.autoencoder else "autoencoder trained already"
        typer.echo(f"wrote {req.out} ({ae_text}; latent step {result.steps}, "
                   f"loss={result.losses.get('loss', float('nan')):.4f}, {result.seconds:.1f} s)")
        return
    losses = _losses_text(result.losses)
    if outcome.up_to_date:
        typer.echo(f"{result.path} is already trained to step {result.steps} ({losses or 'no losses recorded'}); "
                   "nothing to do: pass a larger --steps to train further")
    else:
        typer.echo(f"wrote {result.path} (step {result.steps}, {losses}, {result.seconds:.1f} s)")
    if outcome.previews:
        typer.echo(f"wrote {', '.join(str(p) for p in outcome.previews)}")


def sample_command(request, on_ray: tuple = (False, None, None)) -> None:
    """`gencc sample`: each file's line as soon as it is written; Ctrl-C says what was kept (exit 130).
    `on_ray`: (--ray, --ray-address, --ray-actors)."""
    import gencc
    from gencc.runtime.stream import Interrupted

    ray, address, actors = on_ray
    if ray or actors is not None:
        _sample_on_ray(request, address, actors)
        return

    try:
        gencc.sample_to_file(request, on_written=_report_sample)
    except Interrupted as e:
        _report_interrupt(e)


def _report_sample(what: str, o) -> None:
    req = o.request
    if what == "samples":
        part = f"samples {o.start}..{o.start + o.count - 1} of {req.n}" if req.shard is not None else f"{req.n} samples"
        typer.echo(f"wrote {req.out} ({part}, shape {o.shape}, backend {o.backend})")
    elif what == "png":
        typer.echo(f"wrote {req.png}" + (f" (the first {o.png_rows} samples)" if o.png_rows < o.count else ""))
    elif what == "preview":
        typer.echo(f"wrote {req.preview_dir} ({o.preview_frames} frames of {o.preview_n} samples: PNGs and "
                   "reverse.gif)")


def _sample_on_ray(request, address, actors) -> None:
    """`gencc sample --ray`: a progress bar over the whole job, then the file lines and each actor's rate."""
    import os

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # Ray's core logs an error-level note for every restartable actor; gencc reports failures itself.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    from gencc.ray import RayJob, sample_request_on_ray

    columns = (TextColumn("[bold]sample on Ray"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    bars = Progress(*columns, transient=False)
    task = None

    def progress(done: int, n: int) -> None:   # the bar appears with the first samples: a refusal draws none
        nonlocal task
        if task is None:
            bars.start()
            task = bars.add_task("sample", total=n)
        bars.update(task, completed=done)

    try:
        outcome, ran = sample_request_on_ray(request, RayJob(address, actors), progress)
    except KeyboardInterrupt:
        bars.stop()
        typer.echo(f"gencc: interrupted; a --ray job keeps nothing (no {request.out} was written): run it again",
                   err=True)
        raise typer.Exit(130) from None
    finally:
        bars.stop()
    _report_sample("samples", outcome)
    if request.png is not None:
        _report_sample("png", outcome)
    typer.echo(f"Ray: {len(ran.rates)} actors, {request.n / max(ran.seconds, 1e-9):.1f} samples/s in all "
               f"({ran.seconds:.1f} s)")
    for name, (count, busy) in sorted(ran.rates.items()):
        typer.echo(f"  actor {name}: {count} samples, {count / max(busy, 1e-9):.1f} samples/s while busy")


def _report_interrupt(e) -> None:
    """Ctrl-C: what was kept, and the exact command that continues the job; exit status 130."""
    import shlex

    if e.kept == 0:
        typer.echo(f"gencc: interrupted before any of the {e.n} samples were finished; nothing was kept", err=True)
        raise typer.Exit(130)
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    command = shlex.join(["gencc", *argv, "--resume"])
    typer.echo(f"gencc: interrupted: kept {e.kept} of {e.n} samples in {e.partial}; to continue:\n  {command}",
               err=True)
    raise typer.Exit(130)


def info_text(path: Path) -> str:
    from gencc.api import describe_text

    return describe_text(path)


def merge_command(shards: list[Path], out: Path, force: bool = False) -> None:
    import gencc

    n, shape = gencc.merge(shards, out, force=force)
    typer.echo(f"wrote {out} ({n} samples, shape {shape}, from {len(shards)} shards)")


def data_command(name: str, n, seed: int, split: str, out: Path) -> None:
    import gencc

    made = gencc.make_data(name, out, n=n, seed=seed, split=split)
    typer.echo(f"wrote {out} ({made.count} samples of shape {made.sample_shape})")
