"""`gencc.describe(path) -> dict` and its human-readable form: what a checkpoint or an artifact holds.

This module is the one place outside models/ and runtime/artifact.py that knows the checkpoint config and
the manifest: the command line renders what it returns. An artifact is described from its manifest alone
(its hashes checked), before any gencc.models import: those load torch (1.6 s), which an artifact never needs.
"""
from __future__ import annotations

import json
from pathlib import Path


def describe(path: str | Path) -> dict:
    """JSON-able data: for an artifact {"kind": "artifact", "files_intact", "signed_by", "libraries",
    "manifest"}, for a checkpoint {"kind": "checkpoint", "config"}, for latent diffusion
    {"kind": "latent-diffusion checkpoint", "autoencoder", "latent", "latent_shape", "latent_scale"};
    each with "path". Refuses (GenccError) a path that is none of them, or a damaged one."""
    from gencc.runtime.artifact import is_artifact, read_manifest
    from gencc.runtime.signing import signer

    path = Path(path)
    if is_artifact(path):
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


def describe_text(path: str | Path) -> str:
    """What `describe` says, as the lines `gencc info` prints."""
    from gencc.runtime.artifact import is_artifact

    path = Path(path)
    if is_artifact(path):   # before any gencc.models import, as in describe
        return _artifact_text(path)
    from gencc.models.checkpoint import load_config
    from gencc.models.latent import is_latent_checkpoint

    if is_latent_checkpoint(path):
        return _latent_text(path)
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


def _latent_text(path: Path) -> str:
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


def _artifact_text(path: Path) -> str:
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
    if isinstance(r.get("conventions"), dict):   # a user's network (docs/YOUR_MODEL.md)
        lines.append(f"  network:    {json.dumps(r['conventions'])}, fused into the step; "
                     f"from {json.dumps(r.get('source'))}")
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
