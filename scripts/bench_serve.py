"""gencc serve's costs: serving overhead against Model.sample, and micro-batching's throughput (issue 16).

    .venv/bin/python scripts/bench_serve.py [--artifact out/demo/digits-diffusion.gencc] [--steps 200]
        [--repeats 9] [--clients 32] [--requests 16] [--client raw] [--json out.json] [--md out.md]

Without --artifact it trains the default digits diffusion network for 3 steps and compiles it into --work
(the network's size, not its training, sets the times). Three measurements, each against `gencc serve`
processes started here on free ports:
  1. overhead: one digits batch-64 job, `Model.sample(64)` in this process (no server running) against
     `POST /v1/samples` n=64 format=npy timed at the client (HTTP, queueing, npy encode and decode included);
     medians of --repeats after a warm-up of each;
  2. throughput: --clients concurrent clients (httpx async), each sending --requests batch-1 sync requests
     one after another, to a server with micro-batching (its defaults: --batch-size 64, --batch-wait-ms 5)
     and to one without (--batch-size 1: every request its own compiled batch); samples/s over the wall
     time of all requests, and their latencies' p50 and p99.
The client shares the machine's cores with the server, as a client on the same host would.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gencc.runtime.defaults import DEFAULT_STEPS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(artifact: Path, *extra: str):
    """A `gencc serve` process on a free port; yields its base URL once /v2/health/ready answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gencc.cli.main", "serve", f"m={artifact}", "--port",
                             str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gencc serve did not start (exit status {proc.poll()})")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/v2/health/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_artifact(work: Path) -> Path:
    """The default digits diffusion network, trained 3 steps and compiled for this CPU."""
    from dataclasses import replace

    from gencc.compiler.compile import compile_artifact
    from gencc.models.data import load_dataset
    from gencc.models.train import default_config, train

    out = work / "digits.gencc"
    if not (out / "manifest.json").exists():
        ds = load_dataset("digits")
        train("diffusion", ds, work / "ckpt", replace(default_config("diffusion", ds.kind), steps=3, ckpt_every=3))
        compile_artifact(work / "ckpt", out, target="llvm")
    return out


def quantile(xs: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(xs), q))


def overhead(artifact: Path, steps: int, repeats: int) -> dict:
    import httpx

    import gencc

    model = gencc.load(artifact, require_signature=False)
    model.sample(64, steps=steps, seed=0)
    direct = []
    for i in range(repeats):
        t0 = time.perf_counter()
        model.sample(64, steps=steps, seed=i)
        direct.append(time.perf_counter() - t0)
    del model
    served = []
    with serve(artifact) as base, httpx.Client(base_url=base, timeout=600) as http:
        body = {"model": "m", "n": 64, "steps": steps, "format": "npy"}
        http.post("/v1/samples", json={**body, "seed": 0}).raise_for_status()
        for i in range(repeats):
            t0 = time.perf_counter()
            r = http.post("/v1/samples", json={**body, "seed": i})
            r.raise_for_status()
            np.load(io.BytesIO(r.content), allow_pickle=False)
            served.append(time.perf_counter() - t0)
    d, s = statistics.median(direct), statistics.median(served)
    return {"direct_s": d, "served_s": s, "overhead": s / d - 1, "served_p99_s": quantile(served, 0.99),
            "direct_p99_s": quantile(direct, 0.99)}


class RawClient:
    """One keep-alive HTTP/1.1 connection, written and parsed by hand: a client that costs a few microseconds a
    request, so that on a small machine the benchmark times the server rather than its client (httpx spends
    about 3 ms of CPU a request here, which caps a same-host httpx client near 300 requests/s)."""

    def __init__(self, base: str):
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        length = next(int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:"))
        content = await self.reader.readexactly(length)
        if status != 200:
            raise SystemExit(f"POST {path} answered {status}: {content[:200]!r}")
        return content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def clients(base: str, n_clients: int, requests: int, steps: int, kind: str = "raw"
                  ) -> tuple[float, list[float]]:
    import httpx

    async def one_client(c: int) -> list[float]:
        out = []
        http = RawClient(base) if kind == "raw" else httpx.AsyncClient(base_url=base, timeout=600)
        try:
            for j in range(requests):
                body = {"model": "m", "n": 1, "steps": steps, "seed": 1000 * c + j, "format": "npy"}
                t0 = time.perf_counter()
                if kind == "raw":
                    await http.post("/v1/samples", body)
                else:
                    (await http.post("/v1/samples", json=body)).raise_for_status()
                out.append(time.perf_counter() - t0)
        finally:
            await (http.close() if kind == "raw" else http.aclose())
        return out

    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(c) for c in range(n_clients)))
    return time.perf_counter() - t0, [x for xs in per_client for x in xs]


def throughput(artifact: Path, steps: int, n_clients: int, requests: int, extra: tuple[str, ...],
               kind: str = "raw") -> dict:
    with serve(artifact, *extra) as base:
        asyncio.run(clients(base, n_clients, 1, steps, kind))   # warm-up: the batch sizes this run will see
        before = batch_counts(base)
        wall, lat = asyncio.run(clients(base, n_clients, requests, steps, kind))
        after = batch_counts(base)
    rows = (after[1] - before[1]) / max(after[0] - before[0], 1)
    return {"samples_per_s": len(lat) / wall, "wall_s": wall, "requests": len(lat),
            "p50_s": quantile(lat, 0.5), "p99_s": quantile(lat, 0.99), "rows_per_batch": rows}


def batch_counts(base: str) -> tuple[float, float]:
    """The server's batch steps run and the sample steps they advanced (/metrics): their ratio is rows a batch."""
    import httpx

    text = httpx.get(base + "/metrics").text.splitlines()
    value = lambda name: sum(float(ln.split()[-1]) for ln in text if ln.startswith(name + " "))   # noqa: E731
    return value("gencc_steps_total"), value("gencc_sample_steps_total")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores"


def markdown(r: dict) -> str:
    o, b, u = r["overhead"], r["batched"], r["unbatched"]
    ms = lambda s: f"{s * 1000:.1f} ms"   # noqa: E731

    def row(name: str, x: dict) -> str:
        return (f"| {name} | {x['samples_per_s']:.1f} | {ms(x['p50_s'])} | {ms(x['p99_s'])} | {x['wall_s']:.2f} s "
                f"| {x['rows_per_batch']:.1f} | {x['samples_per_s'] / u['samples_per_s']:.2f}x |")

    lines = [f"`{r['artifact']}`, {r['machine']}, {r['date']}; load average {r['load_before']} before, "
             f"{r['load_after']} after; {r['steps']} `em` steps; {r['client']} clients.", ""]
    if o:
        lines += [
            "| one batch-64 job | median | p99 | overhead (target <= 10%) |",
            "|---|---|---|---|",
            f"| `Model.sample(64)` in-process | {ms(o['direct_s'])} | {ms(o['direct_p99_s'])} | |",
            f"| `POST /v1/samples` n=64 (npy) | {ms(o['served_s'])} | {ms(o['served_p99_s'])} | "
            f"{o['overhead'] * 100:+.1f}% |", ""]
    lines += [
        f"| {r['clients']} clients x {r['requests']} batch-1 requests | samples/s | p50 latency | p99 latency "
        "| wall | rows a batch | x no batching (target >= 3x) |",
        "|---|---|---|---|---|---|---|",
        row("micro-batching (defaults: --batch-size 64, --batch-wait-ms 5)", b),
        *(row(f"micro-batching, --batch-wait-ms {w:g}", x) for w, x in r["waits"].items()),
        row("no batching (--batch-size 1)", u),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="a compiled digits diffusion artifact (default: build one)")
    ap.add_argument("--work", type=Path, default=Path("out/bench-serve"), help="where the default artifact goes")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="sampler steps (default: the server's)")
    ap.add_argument("--repeats", type=int, default=9, help="timed batch-64 requests (and direct calls)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=16, help="batch-1 requests each client sends in turn")
    ap.add_argument("--wait-ms", type=float, nargs="*", default=[20.0],
                    help="more --batch-wait-ms values to measure micro-batching with, besides the default 5")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="the concurrent clients: hand-written HTTP/1.1 (cheap) or httpx.AsyncClient")
    ap.add_argument("--no-overhead", action="store_true", help="measure throughput only (e.g. a points model)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    a = ap.parse_args(argv)
    if a.artifact is None:
        a.work.mkdir(parents=True, exist_ok=True)
        a.artifact = build_artifact(a.work)
    r = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": a.steps,
         "clients": a.clients, "requests": a.requests, "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    r["artifact"] = a.artifact.name
    r["overhead"] = None if a.no_overhead else overhead(a.artifact, a.steps, a.repeats)
    r["client"] = a.client
    r["batched"] = throughput(a.artifact, a.steps, a.clients, a.requests, (), a.client)
    r["waits"] = {w: throughput(a.artifact, a.steps, a.clients, a.requests, ("--batch-wait-ms", str(w)), a.client)
                  for w in a.wait_ms}
    r["unbatched"] = throughput(a.artifact, a.steps, a.clients, a.requests, ("--batch-size", "1"), a.client)
    r["batching_speedup"] = r["batched"]["samples_per_s"] / r["unbatched"]["samples_per_s"]
    r["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    md = markdown(r)
    print(md)
    if a.json:
        a.json.write_text(json.dumps(r, indent=1) + "\n")
    if a.md:
        a.md.write_text(md)
    return r


if __name__ == "__main__":
    main()
