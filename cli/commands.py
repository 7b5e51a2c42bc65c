"""What each CLI command does, in terms of the library: load, call, write, report."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import typer

from gencc.runtime.atomic import atomic_path
from gencc.runtime.errors import GenccError


def _check_out_file(path: Path, suffix: str | None = None) -> None:
    if not path.parent.is_dir():
        raise GenccError(f"output folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise GenccError(f"output {str(path)!r} is a directory")
    if suffix and path.suffix != suffix:
        raise GenccError(f"output {str(path)!r} must end in {suffix}")


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
    from gencc.models.train import check_output, default_config, train

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
    cfg = replace(default_config(model, dataset.kind), seed=seed, **overrides)
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
    if not quiet:
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


def _train_preview(out: Path, folder, every: int, seed: int, resume: bool):
    from gencc.models.preview import TrainPreview, check_train_preview, preview_dir_for

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
    from gencc.models.latent import AE_DEFAULT, LATENT_DEFAULT, train_latent_diffusion
    from gencc.models.train import check_output

    check_output(out, resume)
    dataset = load_dataset(data, seed=seed, image_size=image_size, channels=channels)
    if dataset.kind != "image":
        raise GenccError(f"latent diffusion needs images; {data!r} holds vectors of shape {dataset.data.shape[1:]}")
    common = {"seed": seed, **({"ckpt_every": ckpt_every} if ckpt_every is not None else {})}
    ae_cfg = replace(AE_DEFAULT, **common, **({"steps": ae_steps} if ae_steps is not None else {}))
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr).items() if v is not None}
    cfg = replace(LATENT_DEFAULT, **common, **overrides)
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
                   options=None, resume: bool = False, trusted_keys=None, shard: str | None = None,
                   preview_dir=None, preview_every=None, label=None, guidance=None) -> None:
    """Samples stream to `out` batch by batch (runtime/stream.py): memory does not grow with n.
    With `shard` ("k/N"), only shard k's slice of the n samples is drawn (runtime/shard.py)."""
    import gencc
    from gencc.runtime import shard as sharding
    from gencc.runtime.stream import SUFFIXES, sample_to_file

    _check_out_file(out)
    if out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(out)!r} must end in .npz or .npy")
    part = sharding.parse_shard(shard) if shard is not None else None
    if part is not None and out.suffix != ".npz":
        raise GenccError(f"--shard writes a .npz (the shard's place in the job is stored beside the samples), "
                         f"got {str(out)!r}")
    if png is not None:
        _check_out_file(png, ".png")
    if preview_dir is not None or preview_every is not None:
        preview_every = _check_preview(preview_dir, preview_every, steps, others=(out, png))
    model = gencc.load(path, backend=backend, device=device, trusted_keys=trusted_keys)
    conditioning = {k: v for k, v in (("label", label), ("guidance", guidance)) if v is not None}
    sampling = dict(steps=steps, sampler=sampler, seed=seed, options=options, **conditioning)
    start, count, extra = 0, n, None
    if part is not None:
        start, hi = part.range(n, batch_size)
        count = hi - start
        if count == 0:
            raise GenccError(f"shard {shard} is empty: {n} samples at --batch-size {batch_size} make only "
                             f"{-(-n // batch_size)} batches, and a shard takes whole batches")
        extra = sharding.shard_arrays(part, n, batch_size, sharding.job_identity(model.info, sampling))
    preview = sample_to_file(model, count, out, batch_size=batch_size, resume=resume, start=start, extra=extra,
                             **sampling)
    what = f"samples {start}..{start + count - 1} of {n}" if part is not None else f"{n} samples"
    typer.echo(f"wrote {out} ({what}, shape {preview.shape[1:]}, backend {model.backend})")
    if png is not None:
        write_png(png, preview, model.data_name)
        typer.echo(f"wrote {png}" + (f" (the first {len(preview)} samples)" if len(preview) < count else ""))
    if preview_every is not None:
        preview_command(model, preview_dir, preview_every, n, **sampling)


def _check_preview(folder, every, steps: int, others=()) -> int:
    from gencc.runtime.preview import check_every, check_preview_dir

    if folder is None:
        raise GenccError("--preview-every needs --preview DIR")
    _check_distinct(folder, others)
    check_preview_dir(folder)
    return check_every(every if every is not None else max(1, steps // 10))


def preview_command(model, folder: Path, every: int, n: int, **sampling) -> None:
    """The first samples again (identical to the output's: sample i depends on (seed, i)), watched."""
    from gencc.runtime.preview import IMAGES, POINTS, write_preview

    n = min(n, POINTS if len(model.sample_shape) == 1 else IMAGES)
    reference = None
    if model.sample_shape == (2,):
        from gencc.models.data import BUILTIN_2D, load_dataset

        if model.data_name in BUILTIN_2D:
            reference = load_dataset(model.data_name, split="test", n=n).data
    record = write_preview(model, folder, every=every, n=n, reference=reference,
                           **{k: v for k, v in sampling.items() if v is not None})
    typer.echo(f"wrote {folder} ({len(record['frames'])} frames of {n} samples: PNGs and reverse.gif)")



def write_png(png: Path, samples: np.ndarray, data_name: str) -> None:
    """2-D samples are drawn over held-out data of the same built-in set, when there is one."""
    from gencc.runtime.render import save_png

    reference = None
    if samples.ndim == 2 and samples.shape[1] == 2:
        from gencc.models.data import BUILTIN_2D, load_dataset

        if data_name in BUILTIN_2D:
            reference = load_dataset(data_name, split="test", n=len(samples)).data
    save_png(png, samples, reference)


def info_text(path: Path) -> str:
    from gencc.models.checkpoint import load_config
    from gencc.runtime.artifact import is_artifact

    from gencc.models.latent import is_latent_checkpoint

    if is_artifact(path):
        return artifact_text(path)
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
    from gencc.models.checkpoint import load_config
    from gencc.runtime.artifact import is_artifact, read_manifest
    from gencc.runtime.signing import signer

    if is_artifact(path):
        return {"path": str(path), "kind": "artifact", "files_intact": True, "signed_by": signer(path),
                "manifest": read_manifest(path).raw}
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
    _check_out_file(out, ".npz")
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
    if m.sde:
        lines.append(f"  sde:        {json.dumps(m.sde.to_dict())}; step contract {r.get('step_contract')}")
    if isinstance(r.get("conventions"), dict):   # a user's network (docs/YOUR_MODEL.md)
        lines.append(f"  network:    {json.dumps(r['conventions'])}, fused into the step; "
                     f"from {json.dumps(r.get('source'))}")
    if r.get("parity_max_abs_err"):
        lines.append(f"  parity:     {json.dumps(r['parity_max_abs_err'])} (max abs err vs ONNX Runtime)")
    key = signer(path)
    lines.append(f"  signature:  {'none' if key is None else f'by key {key} (not checked here: use --trusted-key)'}")
    return "\n".join(lines)


def merge_command(shards: list[Path], out: Path) -> None:
    from gencc.runtime.shard import merge

    _check_out_file(out)
    n, shape = merge(shards, out)
    typer.echo(f"wrote {out} ({n} samples, shape {shape}, from {len(shards)} shards)")
