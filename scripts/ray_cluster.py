"""A local Ray cluster of `nodes` node processes on this machine, for tests/test_ray_cluster.py and
scripts/bench_ray.py: `ray start --head --block` plus `ray start --address ... --block` per extra node.

Each node is its own process group, ended by its id (SIGTERM, then SIGKILL) rather than by `ray stop`,
which would stop every Ray instance of this user on the machine.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
# A private cluster on this machine, for one test or benchmark: no tokens (Ray >= 2.5x asks for one when a
# node's environment and a client's disagree); clients run with ENV too.
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(args: list[str], cpus: int) -> subprocess.Popen:
    cmd = [str(RAY), "start", *args, "--num-cpus", str(cpus), "--object-store-memory", str(100_000_000),
           "--disable-usage-stats", "--block"]
    return subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_nodes(address: str, nodes: int, timeout: float = 90) -> None:
    """Until `nodes` nodes are alive, asked from a separate process (this one stays out of Ray)."""
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **ENV})
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(nodes)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the local Ray cluster at {address} did not reach {nodes} nodes in {timeout:.0f} s")


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1):
    """Yield the head's address ("127.0.0.1:PORT") of a cluster of `nodes` nodes on this machine."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = [_node(["--head", "--port", str(port), "--include-dashboard", "false"], cpus_per_node)]
    try:
        _wait_nodes(address, 1)
        procs += [_node(["--address", address], cpus_per_node) for _ in range(nodes - 1)]
        _wait_nodes(address, nodes)
        yield address
    finally:
        for p in reversed(procs):
            _end(p)
        _forget(port)


def _forget(port: int) -> None:
    """Drop `ray start`'s note of this cluster (what a later ray.init() would try to join), if still ours."""
    note = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        if note.read_text().strip().endswith(f":{port}"):
            note.unlink()


def _end(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
