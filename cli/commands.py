"""What each CLI command does, in terms of the library: load, call, write, report."""
from __future__ import annotations

import json
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
                  image_size, channels, ckpt_every=None) -> None:
    from dataclasses import replace

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from gencc.models.data import load_dataset
    from gencc.models.train import check_output, default_config, train

    check_output(out, resume)
    dataset = load_dataset(data, seed=seed, image_size=image_size, channels=channels)
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, ckpt_every=ckpt_every).items()
                 if v is not None}
    cfg = replace(default_config(model, dataset.kind), seed=seed, **overrides)
    columns = (TextColumn("[bold]train {task.fields[model]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=cfg.steps, model=model, losses="")

        def progress(step: int, total: int, losses: dict) -> None:
            if step % 20 == 0 or step == total:
                text = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
                bar.update(task, completed=step, losses=text)

        result = train(model, dataset, out, cfg, width=width, resume=resume, progress=progress)
    losses = " ".join(f"{k}={v:.4f}" for k, v in result.losses.items())
    typer.echo(f"wrote {result.path} (step {result.steps}, {losses}, {result.seconds:.1f} s)")


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
                   options=None, resume: bool = False, trusted_keys=None) -> None:
    """Samples stream to `out` batch by batch (runtime/stream.py): memory does not grow with n."""
    import gencc
    from gencc.runtime.stream import SUFFIXES, sample_to_file

    _check_out_file(out)
    if out.suffix not in SUFFIXES:
        raise GenccError(f"output {str(out)!r} must end in .npz or .npy")
    if png is not None:
        _check_out_file(png, ".png")
    model = gencc.load(path, backend=backend, device=device, trusted_keys=trusted_keys)
    preview = sample_to_file(model, n, out, batch_size=batch_size, resume=resume,
                             steps=steps, sampler=sampler, seed=seed, options=options)
    typer.echo(f"wrote {out} ({n} samples, shape {preview.shape[1:]}, backend {model.backend})")
    if png is not None:
        write_png(png, preview, model.data_name)
        typer.echo(f"wrote {png}" + (f" (the first {len(preview)} samples)" if len(preview) < n else ""))


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
    if r.get("parity_max_abs_err"):
        lines.append(f"  parity:     {json.dumps(r['parity_max_abs_err'])} (max abs err vs ONNX Runtime)")
    key = signer(path)
    lines.append(f"  signature:  {'none' if key is None else f'by key {key} (not checked here: use --trusted-key)'}")
    return "\n".join(lines)
