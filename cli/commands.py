"""What each CLI command does, in terms of the library: load, call, write, report."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import typer

from gencc.runtime.atomic import atomic_path, check_output_path
from gencc.runtime.errors import GenccError


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def train_command(model: str, data: str, out: Path, *, steps, batch_size, lr, seed, width, resume,
                  image_size, channels, ckpt_every=None, nproc=None, device="cpu", preview_dir=None,
                  preview_every: int = 0, conditional: bool = False) -> None:
    from dataclasses import replace
    from functools import partial

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from gencc.models.data import load_dataset
    from gencc.models.distributed import check_parallel, torchrun_launch, train_parallel
    from gencc.models.train import check_output, check_resume, default_config, resumed_config, train

    launch = torchrun_launch()
    distributed = nproc is not None or launch is not None
    if device != "cpu" and not distributed:
        raise GenccError(f"--device {device} is for distributed training; pass --nproc N (1 is fine)")
    if distributed and preview_dir is not None:
        raise GenccError("--preview is for single-process training; drop it, or --nproc")
    if distributed and conditional:
        raise GenccError("--conditional is for single-process training for now; drop --nproc")
    quiet = launch is not None and launch.rank != 0   # torchrun's other ranks: rank 0 reports for all
    if not quiet:
        check_output(out, resume)
    prior = _resumed(out, resume)
    if seed is None:   # a resumed run keeps its own: builtin 2-D data is drawn from it
        seed = prior.get("train", {}).get("seed", 0) if prior else 0
    # Previews watch the single-process loop; distributed training runs without them.
    watch = None if distributed else _train_preview(out, preview_dir, preview_every, seed, resume)
    dataset = load_dataset(data, seed=seed, image_size=image_size, channels=channels)
    if watch is not None:
        watch.draw_over(dataset.data)
    if conditional:
        from gencc.models.train import count_classes

        count_classes(dataset)   # unlabelled data fails here, before the progress bar starts
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, ckpt_every=ckpt_every).items()
                 if v is not None}
    base = resumed_config(prior) if prior else default_config(model, dataset.kind)   # resumed: the run's own
    cfg = replace(base, seed=seed, **overrides)
    if prior and not distributed:   # before the progress bar; the ranks check for themselves
        check_resume(out, model, dataset, cfg, width=width, conditional=conditional)
    if prior and steps is not None and steps < prior["step"]:
        raise GenccError(f"{str(out)!r} is at step {prior['step']} already, past --steps {steps}; "
                         "ask for more steps to continue it")
    if distributed:
        check_parallel(model, dataset, cfg, nproc=nproc, device=device)
    fit = partial(train_parallel, nproc=nproc, device=device) if distributed else \
        partial(train, watch=watch, conditional=conditional)
    columns = (TextColumn("[bold]train {task.fields[model]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False, disable=quiet) as bar:
        task = bar.add_task("train", total=cfg.steps, model=model, losses="")

        def progress(step: int, total: int, losses: dict) -> None:
            if step % 20 == 0 or step == total:
                text = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                bar.update(task, completed=step, losses=text)

        result = fit(model, dataset, out, cfg, width=width, resume=resume, progress=progress)
    losses = " ".join(f"{k}={v:.4f}" for k, v in result.losses.items())
    if quiet:
        pass
    elif prior and result.steps == prior["step"]:
        typer.echo(f"{result.path} is already trained to step {result.steps} ({losses or 'no losses recorded'}); "
                   "nothing to do: pass a larger --steps to train further")
    else:
        typer.echo(f"wrote {result.path} (step {result.steps}, {losses}, {result.seconds:.1f} s)")
    if watch is not None and watch.written:
        typer.echo(f"wrote {', '.join(str(p) for p in watch.written)}")
    if launch is not None:
        # A torchrun rank leaves without running interpreter teardown: gloo's process-group threads
        # aborted one rank in about 30 at exit ("terminate called without an active exception"),
        # after training had finished and rank 0 had written the checkpoint.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _resumed(out: Path, resume: bool) -> dict | None:
    """The config of the checkpoint a --resume continues, or None for a new run."""
    if not (resume and out.exists()):
        return None
    from gencc.models.checkpoint import load_config

    return load_config(out)


def _train_preview(out: Path, folder, every: int, seed: int, resume: bool):
    from gencc.models.train_preview import TrainPreview, check_train_preview, preview_dir_for

    folder = Path(folder) if folder is not None else preview_dir_for(out)
    _check_distinct(folder, (out,))   # a checkpoint directory is replaced whole at every save
    check_train_preview(folder, every)
    if every == 0:
        return None
    start = 0
    if resume and out.exists():
        from gencc.models.checkpoint import load_config

        start = load_config(out)["step"]
    return TrainPreview(folder, every, seed=seed, start_step=start)


def _progress_bar():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]train {task.fields[model]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, transient=False)


def latent_train_command(data: str, out: Path, *, steps, batch_size, lr, seed, width, resume, image_size,
                         channels, ckpt_every, autoencoder, ae_steps) -> None:
    """Two stages, one progress bar each; --steps, --batch-size, --lr and --width are the latent stage's."""
    from dataclasses import replace

    from gencc.models.data import load_dataset
    from gencc.models.latent import AE_DEFAULT, AE_DIR, LATENT_DEFAULT, LATENT_DIR, train_latent_diffusion
    from gencc.models.train import check_output, resumed_config

    check_output(out, resume)
    # A resumed stage keeps its own settings where none are given, as train_command does.
    ae_prior, latent_prior = (_resumed(out / stage, resume) for stage in (AE_DIR, LATENT_DIR))
    if seed is None:
        seed = (ae_prior or latent_prior or {}).get("train", {}).get("seed", 0)
    dataset = load_dataset(data, seed=seed, image_size=image_size, channels=channels)
    if dataset.kind != "image":
        raise GenccError(f"latent diffusion needs images; {data!r} holds vectors of shape {dataset.data.shape[1:]}")
    common = {"seed": seed, **({"ckpt_every": ckpt_every} if ckpt_every is not None else {})}
    ae_base = resumed_config(ae_prior) if ae_prior else AE_DEFAULT
    ae_cfg = replace(ae_base, **common, **({"steps": ae_steps} if ae_steps is not None else {}))
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr).items() if v is not None}
    cfg = replace(resumed_config(latent_prior) if latent_prior else LATENT_DEFAULT, **common, **overrides)
    with _progress_bar() as bar:
        def stage(name: str, total: int):
            task = bar.add_task(name, total=total, model=name, losses="")

            def progress(step: int, total: int, losses: dict) -> None:
                if step % 20 == 0 or step == total:
                    bar.update(task, completed=step, losses=" ".join(f"{k}={v:.4f}" for k, v in losses.items()))
            return progress

        results = train_latent_diffusion(dataset, out, ae_cfg, cfg, autoencoder=autoencoder, width=width,
                                         resume=resume, progress=stage)
    ae, latent = results["autoencoder"], results["latent"]
    ae_text = f"autoencoder step {ae.steps}, {ae.seconds:.1f} s" if ae else \
        f"autoencoder copied from {autoencoder}" if autoencoder else "autoencoder trained already"
    typer.echo(f"wrote {out} ({ae_text}; latent step {latent.steps}, loss={latent.losses.get('loss', float('nan')):.4f}, "
               f"{latent.seconds:.1f} s)")


def sample_command(path: Path, n: int, out: Path, *, steps, sampler, seed, batch_size, png, backend, device,
                   corrector_steps=None, snr=None, resume: bool = False, force: bool = False, trusted_keys=None,
                   shard: str | None = None, preview_dir=None, preview_every=None, label=None, guidance=None) -> None:
    """Samples stream to `out` batch by batch (runtime/stream.py): memory does not grow with n.
    With `shard` ("k/N"), only shard k's slice of the n samples is drawn (runtime/shard.py).
    Every option is checked against the model before the first sample is drawn."""
    import gencc
    from gencc.runtime import shard as sharding
    from gencc.runtime.stream import SUFFIXES, Interrupted, sample_to_file

    check_output_path(out)
    if out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(out)!r} must end in .npz or .npy")
    part = sharding.parse_shard(shard) if shard is not None else None
    if part is not None and out.suffix != ".npz":
        raise GenccError(f"--shard writes a .npz (the shard's place in the job is stored beside the samples), "
                         f"got {str(out)!r}")
    if png is not None:
        check_output_path(png, suffix=".png")
    if preview_dir is not None or preview_every is not None:
        _check_preview_folder(preview_dir, preview_every, others=(out, png))
    model = gencc.load(path, backend=backend, device=device, trusted_keys=trusted_keys)
    sampling = _sampling_request(model, n, batch_size, steps=steps, sampler=sampler, seed=seed, label=label,
                                guidance=guidance, corrector_steps=corrector_steps, snr=snr)
    if png is not None:
        _check_picturable(model, "--png")
    if preview_dir is not None:
        preview_every = _check_preview_every(model, preview_every, sampling.get("steps"))
    _check_overwrite((out, png), force)
    start, count, extra = _shard_job(part, n, batch_size, model, sampling)
    try:
        preview = sample_to_file(model, count, out, batch_size=batch_size, resume=resume, start=start, extra=extra,
                                 **sampling)
    except Interrupted as e:
        _report_interrupt(e)
    what = f"samples {start}..{start + count - 1} of {n}" if part is not None else f"{n} samples"
    typer.echo(f"wrote {out} ({what}, shape {preview.shape[1:]}, backend {model.backend})")
    if png is not None:
        write_png(png, preview, model.data_name)
        typer.echo(f"wrote {png}" + (f" (the first {len(preview)} samples)" if len(preview) < count else ""))
    if preview_dir is not None:
        preview_command(model, preview_dir, preview_every, n, **sampling)


def _shard_job(part, n: int, batch_size: int, model, sampling: dict) -> tuple:
    """(first sample, count, the arrays stored beside the samples) of shard `part`, or of the whole job."""
    from gencc.runtime import shard as sharding

    if part is None:
        return 0, n, None
    start, hi = part.range(n, batch_size)
    if hi == start:
        raise GenccError(f"shard {part.index}/{part.count} is empty: {n} samples at --batch-size {batch_size} make "
                         f"only {-(-n // batch_size)} batches, and a shard takes whole batches")
    return start, hi - start, sharding.shard_arrays(part, n, batch_size, sharding.job_identity(model.info, sampling))


def _sampling_request(model, n: int, batch_size: int, *, steps, sampler, seed: int, label, guidance,
                     corrector_steps=None, snr=None) -> dict:
    """Model.sample's keyword arguments for these options, each checked against the model: an option
    the model would ignore (a sampler for a GAN, --snr for em) is refused rather than dropped."""
    from gencc.runtime.conditioning import check_condition
    from gencc.runtime.model import DEFAULT_SAMPLER, DEFAULT_STEPS
    from gencc.runtime.samplers import get_sampler, pc_plan, time_grid

    for name, v in (("n", n), ("batch-size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise GenccError(f"{name} must be a positive integer, got {v!r}")
    check_condition(model.kind, model.num_classes, label, guidance)
    conditioning = {k: v for k, v in (("label", label), ("guidance", guidance)) if v is not None}
    pc_only = [f for f, v in (("--corrector-steps", corrector_steps), ("--snr", snr)) if v is not None]
    if model.kind == "gan":
        given = [f for f, v in (("--steps", steps), ("--sampler", sampler)) if v is not None] + pc_only
        if given:
            raise GenccError(f"{', '.join(given)} {_apply(given)} to diffusion models; this model is a GAN "
                             "(one network call per sample, no sampler)")
        return dict(seed=seed, **conditioning)
    steps = DEFAULT_STEPS if steps is None else steps
    sampler = sampler or DEFAULT_SAMPLER
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise GenccError(f"steps must be a positive integer, got {steps!r}")
    get_sampler(sampler)
    options = None
    if sampler == "pc":
        options = {"corrector_steps": 1 if corrector_steps is None else corrector_steps,
                   "snr": 0.16 if snr is None else snr}
        pc_plan(time_grid(model.sde, steps, "uniform"), model.sde, **options)   # refuses bad values, no sampling
    elif pc_only:
        raise GenccError(f"{', '.join(pc_only)} {_apply(pc_only)} to --sampler pc, not {sampler}")
    return dict(steps=steps, sampler=sampler, seed=seed, options=options, **conditioning)


def _apply(options: list) -> str:
    return "applies" if len(options) == 1 else "apply"


def _check_picturable(model, option: str) -> None:
    from gencc.runtime.render import picturable

    if not picturable(model.sample_shape):
        raise GenccError(f"{option} draws images or 2-D points; this model makes samples of shape "
                         f"{model.sample_shape}")


def _check_overwrite(paths, force: bool) -> None:
    """Like compile: an existing output is replaced only with --force (and then only once the new one is whole)."""
    for p in paths:
        if p is not None and not force:
            check_output_path(p, existing="pass --force to replace it")


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


def _check_preview_folder(folder, every, others=()) -> None:
    """What needs no model: the folder, and --preview-every's value."""
    from gencc.runtime.preview import check_every, check_preview_dir

    if every is not None:
        check_every(every)
    if folder is None:
        raise GenccError("--preview-every needs --preview DIR")
    _check_distinct(folder, others)
    check_preview_dir(folder)


def _check_preview_every(model, every, steps) -> int:
    from gencc.runtime.model import DEFAULT_STEPS
    from gencc.runtime.preview import check_every

    _check_picturable(model, "--preview")
    if model.kind == "gan":
        if every is not None:
            raise GenccError("--preview-every applies to diffusion models; a GAN's preview is its single final frame")
        return DEFAULT_STEPS // 10   # what it was before: recorded in preview.json, no frames depend on it
    return check_every(every if every is not None else max(1, steps // 10))


def preview_command(model, folder: Path, every: int, n: int, **sampling) -> None:
    """The first samples again (identical to the output's: sample i depends on (seed, i)), watched."""
    from gencc.runtime.preview import write_preview
    from gencc.runtime.render import picture_count

    n = min(n, picture_count(model.sample_shape))
    reference = None
    if model.sample_shape == (2,):
        from gencc.models.data import BUILTIN_2D, load_dataset

        if model.data_name in BUILTIN_2D:
            reference = load_dataset(model.data_name, split="test", n=n).data
    record = write_preview(model, folder, every=every, n=n, reference=reference,
                           **{k: v for k, v in sampling.items() if v is not None})
    typer.echo(f"wrote {folder} ({len(record['frames'])} frames of {n} samples: PNGs and reverse.gif)")



def write_png(png: Path, samples: np.ndarray, data_name: str, title: str | None = None) -> None:
    """2-D samples are drawn over held-out data of the same built-in set, when there is one; `title` (and for
    points a legend) goes in a band above the picture."""
    from gencc.runtime.render import save_png

    reference = None
    if samples.ndim == 2 and samples.shape[1] == 2:
        from gencc.models.data import BUILTIN_2D, load_dataset

        if data_name in BUILTIN_2D:
            reference = load_dataset(data_name, split="test", n=len(samples)).data
    save_png(png, samples, reference, title=title)


def info_text(path: Path) -> str:
    from gencc.runtime.artifact import is_artifact

    if is_artifact(path):   # before any gencc.models import: those load torch (1.6 s) an artifact never needs
        return artifact_text(path)
    from gencc.models.checkpoint import load_config
    from gencc.models.latent import is_latent_checkpoint

    if is_latent_checkpoint(path):
        return latent_text(path)
    c = load_config(path)
    d = c["data"]
    lines = [f"{path}: gencc checkpoint (format version {c['version']})",
             f"  model:      {c['model']} ({c['net'].get('arch')})",
             f"  network:    {json.dumps({k: v for k, v in c['net'].items() if k != 'arch'})}",
             f"  data:       {d['name']} ({d['kind']}, sample shape {tuple(d['sample_shape'])})",
             f"  trained:    {c['step']} steps; last losses {json.dumps(c.get('losses', {}))}",
             f"  training:   {json.dumps(c.get('train', {}))}"]
    if "sde" in c:
        lines.append(f"  sde:        {json.dumps(c['sde'])}")
    lines.append(f"  versions:   {json.dumps(c.get('versions', {}))}")
    return "\n".join(lines)


def _check_distinct(folder: Path, others) -> None:
    for other in others:
        if other is not None and Path(folder).resolve() == Path(other).resolve():
            raise GenccError(f"--preview {str(folder)!r} is also an output ({str(other)!r}); choose another folder")


def info_record(path: Path) -> dict:
    """What `info_text` says, as data: the checked checkpoint config, or the checked artifact manifest."""
    from gencc.runtime.artifact import is_artifact, read_manifest
    from gencc.runtime.signing import signer

    if is_artifact(path):   # the manifest alone, as in info_text
        m = read_manifest(path)
        return {"path": str(path), "kind": "artifact", "files_intact": True, "signed_by": signer(path),
                "libraries": artifact_libraries(m), "manifest": m.raw}
    from gencc.models.checkpoint import load_config
    from gencc.models.latent import is_latent_checkpoint, load_latent_checkpoint

    if is_latent_checkpoint(path):
        lc = load_latent_checkpoint(path)
        return {"path": str(path), "kind": "latent-diffusion checkpoint", "autoencoder": lc.autoencoder,
                "latent": lc.diffusion, "latent_shape": list(lc.latent_shape), "latent_scale": lc.scale}
    return {"path": str(path), "kind": "checkpoint", "config": load_config(path)}


def latent_text(path: Path) -> str:
    from gencc.models.latent import AE_DIR, LATENT_DIR, load_latent_checkpoint

    lc = load_latent_checkpoint(path)
    ae, d = lc.autoencoder, lc.diffusion
    return "\n".join([
        f"{path}: gencc latent-diffusion checkpoint ({AE_DIR}/ then {LATENT_DIR}/)",
        f"  data:        {ae['data']['name']} (sample shape {lc.sample_shape})",
        f"  latent:      shape {lc.latent_shape}, scale {lc.scale:.4g}",
        f"  autoencoder: {json.dumps({k: v for k, v in ae['net'].items() if k != 'arch'})}; "
        f"{ae['step']} steps, last losses {json.dumps(ae.get('losses', {}))}",
        f"  latent net:  {d['net'].get('arch')} {json.dumps({k: v for k, v in d['net'].items() if k != 'arch'})}; "
        f"{d['step']} steps, last losses {json.dumps(d.get('losses', {}))}",
        f"  sde:         {json.dumps(d['sde'])}"])


def data_command(name: str, n, seed: int, split: str, out: Path) -> None:
    from gencc.models.data import BUILTIN_2D, BUILTIN_IMAGES, load_dataset

    if name not in BUILTIN_2D + BUILTIN_IMAGES:
        raise GenccError(f"unknown dataset {name!r}; built-in sets are {', '.join(BUILTIN_2D + BUILTIN_IMAGES)}")
    if n is not None and n <= 0:
        raise GenccError(f"n must be a positive integer, got {n}")
    check_output_path(out, suffix=".npz")
    ds = load_dataset(name, n=n, seed=seed, split=split)
    arrays = {"data": ds.data} if ds.labels is None else {"data": ds.data, "labels": ds.labels}
    save_npz(out, **arrays)
    typer.echo(f"wrote {out} ({len(ds.data)} samples of shape {ds.data.shape[1:]})")


def artifact_text(path: Path) -> str:
    from gencc.runtime.artifact import read_manifest
    from gencc.runtime.signing import signer

    m = read_manifest(path)   # hashes included: info says whether the files are intact
    r = m.raw
    lines = [f"{path}: gencc artifact (format version {r['format_version']}), files intact",
             f"  model:      {m.model}, sample shape {m.sample_shape}"
             + (f", latent {m.latent_shape}" if m.latent_shape else "")
             + (f", class-conditional ({m.num_classes} classes)" if m.num_classes else "")
             + (f" (scale {m.latent_scale:.4g})" if m.model == "latent-diffusion" else ""),
             f"  data:       {r.get('data')}",
             f"  target:     {json.dumps(m.target)}  verified: {m.verified}",
             f"  tvm:        {r.get('tvm_version')}"]
    for name, f in m.functions.items():
        ins = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in f["inputs"])
        outs = ", ".join(f"{o['name']}{tuple(o['shape'])}" for o in f["outputs"])
        lines.append(f"  function:   {name} = {f['library']} ({ins}) -> ({outs})")
        for batch, lib in _tuned(f):
            lines.append(f"  tuned:      {name} for batch {batch} = {lib}")
    lines.append("  noise:      " + (f"{m.noise_library} (compiled kernel, {r['noise'].get('contract')})"
                                     if m.noise_library else "drawn on the host by numpy (no compiled kernel)"))
    if m.sde:
        lines.append(f"  sde:        {json.dumps(m.sde.to_dict())}; step contract {r.get('step_contract')}")
    if r.get("parity_max_abs_err"):
        lines.append(f"  parity:     {json.dumps(r['parity_max_abs_err'])} (max abs err vs ONNX Runtime)")
    key = signer(path)
    lines.append(f"  signature:  {'none' if key is None else f'by key {key} (not checked here: use --trusted-key)'}")
    return "\n".join(lines)


def _tuned(function: dict) -> list[tuple[int, str]]:
    """A function's tuned libraries, one per batch size it was specialised for, smallest batch first."""
    return sorted((int(b), v["library"]) for b, v in function.get("static", {}).items())


def artifact_libraries(m) -> dict[str, str]:
    """Every native library of an artifact (manifest `m`) and what it computes."""
    libraries = {}
    for name, f in m.functions.items():
        libraries[f["library"]] = f"{name}, any batch size"
        libraries.update({lib: f"{name}, tuned for batch {b}" for b, lib in _tuned(f)})
    if m.noise_library:
        libraries[m.noise_library] = f"noise kernel ({m.raw['noise'].get('contract')})"
    return libraries


def merge_command(shards: list[Path], out: Path, force: bool = False) -> None:
    from gencc.runtime.shard import merge

    check_output_path(out)
    _check_overwrite((out,), force)
    n, shape = merge(shards, out)
    typer.echo(f"wrote {out} ({n} samples, shape {shape}, from {len(shards)} shards)")
